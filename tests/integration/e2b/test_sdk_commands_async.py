"""E2B's async SDK (``e2b.AsyncSandbox``, unchanged) ``sandbox.commands`` against a live
platform's envd plane (docs/e2b.md §3.1)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from e2b import AsyncSandbox, CommandExitException
from e2b.exceptions import NotFoundException, SandboxNotRunningException, TimeoutException

from tests.harness.e2b import E2BEnv

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

DEADLINE_S = 60.0


@pytest.fixture
async def sbx(e2b_env: E2BEnv) -> AsyncIterator[AsyncSandbox]:
    s = await AsyncSandbox.create(template=e2b_env.template, timeout=300)
    try:
        yield s
    finally:
        await s.kill()


async def _running_with(sbx: AsyncSandbox, marker: str) -> bool:
    return any(marker in " ".join(p.args) for p in await sbx.commands.list())


async def test_run_env_cwd_user_and_exit(sbx: AsyncSandbox) -> None:
    out: list[str] = []
    r = await sbx.commands.run("echo $FOO; echo e >&2", envs={"FOO": "v"}, on_stdout=out.append)
    assert (r.stdout, r.stderr, "".join(out)) == ("v\n", "e\n", "v\n")
    assert (await sbx.commands.run("whoami; pwd")).stdout == "user\n/home/user\n"
    assert (await sbx.commands.run("whoami; pwd", user="root", cwd="/tmp")).stdout == "root\n/tmp\n"
    with pytest.raises(CommandExitException) as e:
        await sbx.commands.run("exit 7")
    assert (e.value.exit_code, e.value.error) == (7, "exit status 7")


async def test_background_stdin_connect_kill_list(sbx: AsyncSandbox) -> None:
    got: list[str] = []
    h = await sbx.commands.run("head -n 1; sleep 300", background=True, stdin=True, on_stdout=got.append)
    assert any(p.pid == h.pid for p in await sbx.commands.list())
    await sbx.commands.send_stdin(h.pid, "typed\n")
    deadline = time.monotonic() + DEADLINE_S
    while "".join(got) != "typed\n":
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)
    await h.disconnect()  # the command runs on without its stream
    again = await sbx.commands.connect(h.pid)
    assert await sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        await again.wait()
    assert (e.value.exit_code, e.value.stdout, e.value.error) == (-1, "typed\n", "signal: killed")
    assert await sbx.commands.kill(h.pid) is False
    with pytest.raises(NotFoundException):
        await sbx.commands.connect(h.pid)


async def test_timeout_kills_the_command(sbx: AsyncSandbox) -> None:
    marker = uuid.uuid4().hex
    h = await sbx.commands.run(f"sleep 120 # {marker}", background=True, timeout=2)
    await h.disconnect()
    deadline = time.monotonic() + DEADLINE_S
    while await _running_with(sbx, marker):
        assert time.monotonic() < deadline, "the command outlived its timeout"
        await asyncio.sleep(0.2)
    with pytest.raises((CommandExitException, TimeoutException)):
        await sbx.commands.run("sleep 120", timeout=1)


async def test_sandbox_killed_while_a_command_runs(sbx: AsyncSandbox) -> None:
    h = await sbx.commands.run("sleep 300", background=True)
    waiting = asyncio.create_task(h.wait())
    await sbx.kill()
    with pytest.raises((SandboxNotRunningException, CommandExitException)):
        await waiting
    with pytest.raises(SandboxNotRunningException):
        await sbx.commands.run("true")
