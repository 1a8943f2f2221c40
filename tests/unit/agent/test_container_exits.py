"""The one pidfd watch (agent/container_exits.py): a create's wait for its container's init
(``until_exit``) and the sandboxes' watch (``ContainerExits``) both sit on ``PidWatch``.

The watched processes are this test process's own children, as a container's init is the
agent's (its subreaper): the exit status is read without reaping them (WNOWAIT)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from warren.agent.container_exits import ContainerExits, until_exit


async def test_until_exit_says_how_the_init_ended_and_leaves_the_zombie() -> None:
    proc = subprocess.Popen(["sh", "-c", "read _; exit 3"], stdin=subprocess.PIPE)
    waiting = asyncio.create_task(until_exit(proc.pid))
    await asyncio.sleep(0)  # the watch is on before the exit
    assert proc.stdin is not None
    proc.stdin.close()
    async with asyncio.timeout(30):
        assert await waiting == " (status 3)"
    # Not reaped: the rollback's reap (Teardown.track) still finds it.
    assert os.waitpid(proc.pid, 0) == (proc.pid, 3 << 8)


async def test_until_exit_of_a_killed_init_names_the_signal() -> None:
    proc = subprocess.Popen(["sleep", "1000"])
    waiting = asyncio.create_task(until_exit(proc.pid))
    await asyncio.sleep(0)
    proc.kill()
    async with asyncio.timeout(30):
        assert await waiting == f" (signal {signal.SIGKILL})"
    proc.wait()


async def test_until_exit_of_a_process_gone_already_returns_at_once() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: no pidfd can be opened
    async with asyncio.timeout(30):
        assert await until_exit(proc.pid) == ""


async def test_until_exit_without_a_pid_waits_for_the_callers_timeout() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await until_exit(0)


async def test_a_watched_sandbox_process_reports_once_and_a_forgotten_one_never() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    fired = loop.create_future()

    def on_exit(sb_id: str, pid: int) -> None:
        seen.append((sb_id, pid))
        if not fired.done():
            fired.set_result(None)

    exits = ContainerExits(on_exit)
    watched, forgotten = subprocess.Popen(["sleep", "1000"]), subprocess.Popen(["sleep", "1000"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        exits.watch("sb-gone", gone.pid)  # reaped before the watch: forgotten before it reports
        exits.forget("sb-gone")
        exits.watch("sb-a", watched.pid)
        exits.watch("sb-b", forgotten.pid)
        exits.forget("sb-b")
        forgotten.kill()
        watched.kill()
        async with asyncio.timeout(30):
            await fired
        await asyncio.sleep(0.05)  # anything else due would have run by now
        assert seen == [("sb-a", watched.pid)]
    finally:
        exits.close()
        for p in (watched, forgotten):
            p.kill()
            p.wait()
