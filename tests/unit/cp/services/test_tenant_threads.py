"""The CP's executor for tenant-sized thread work: bounded, fair between teams, and a cancelled
caller holds its turn until its thread has ended (cp/services/tenant_threads.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from pathlib import Path

import pytest

from warren.cp.services import template_import, tenant_threads
from warren.cp.services.tenant_threads import TenantThreads, child_output
from warren.errors import InternalError, InvalidRequest, WarrenError


async def test_a_burst_queues_behind_itself() -> None:
    threads = TenantThreads(2)
    gate = threading.Event()
    order: list[str] = []

    def work(team: str) -> str:
        gate.wait(10)
        order.append(team)
        return team

    burst = [asyncio.ensure_future(threads.run("a", lambda _s: work("a"))) for _ in range(4)]
    await asyncio.sleep(0.05)
    other = asyncio.ensure_future(threads.run("b", lambda _s: work("b")))
    await asyncio.sleep(0.05)
    assert threads.turns.running == 2 and threads.turns.waiting == 3
    gate.set()
    assert await asyncio.gather(*burst, other) == ["a"] * 4 + ["b"]
    # b's got the first free turn, before a's queued two: it ends before them (and may end
    # before the second of a's running ones, which it runs beside).
    assert order.index("b") <= 2, order


async def test_a_cancelled_caller_holds_its_turn_until_its_thread_ends() -> None:
    threads = TenantThreads(1)
    started, release = threading.Event(), threading.Event()

    def slow(stop: threading.Event) -> None:
        started.set()
        release.wait(10)

    task = asyncio.ensure_future(threads.run("a", slow))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done() and threads.turns.running == 1  # the thread still runs: the turn is held
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and threads.turns.running == 0


async def test_stop_is_set_for_work_that_checks_it() -> None:
    threads = TenantThreads(1)
    started = threading.Event()
    saw_stop = threading.Event()

    def steps(stop: threading.Event) -> None:
        started.set()
        if stop.wait(10):
            saw_stop.set()

    task = asyncio.ensure_future(threads.run("a", steps))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert saw_stop.is_set()


# ------------------------------------------------------------------ work in a child (session 25)

_SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_cancelled_child_is_killed_and_reaped_before_the_turn_is_given_back(tmp_path: Path) -> None:
    threads, pid_file = TenantThreads(1), tmp_path / "pid"
    argv = [sys.executable, "-c", _SLEEPER, str(pid_file)]
    run = asyncio.ensure_future(threads.run_child("a", argv, max_output=1 << 10))
    for _ in range(1000):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.01)
    pid = int(pid_file.read_text())
    assert _alive(pid) and threads.turns.running == 1
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert threads.turns.running == 0
    assert not _alive(pid)  # killed and reaped (not even a zombie) before the turn was free


async def test_a_child_past_its_output_is_killed() -> None:
    flood = "import sys\nwhile True: sys.stdout.write('x' * 65536)"
    with pytest.raises(ValueError, match="output past"):
        await child_output([sys.executable, "-c", flood], 1 << 20)


async def test_a_child_gets_none_of_the_processs_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_JWT_SECRET", "s3cret")
    status, out = await child_output([sys.executable, "-c", "import os; print(sorted(os.environ))"], 1 << 16)
    assert status == 0 and b"WARREN_JWT_SECRET" not in out


# ------------------------------------------------ a child's answer, checked (child_answer)


@pytest.mark.parametrize(
    ("status", "out", "error", "message"),
    [
        (0, b'{"error": "not an OCI image layout"}', InvalidRequest, "the image cannot be imported: not an"),
        (0, b'{"error": {"kind": "invalid"}}', InternalError, "the image could not be read"),
        (0, b'{"internal": "OSError: boom"}', InternalError, "the image could not be read"),
        (0, b'{"image": {"layers": "x"}}', InternalError, "the image could not be read"),
        (0, b"not json", InternalError, "the image could not be read"),
        (-9, b"", InternalError, "the image could not be read"),  # killed (its memory, a cancel)
    ],
)
async def test_what_the_image_child_says(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    status: int,
    out: bytes,
    error: type[WarrenError],
    message: str,
) -> None:
    """An import's read (services/template_import.py): the image's fault is the 400 it was,
    anything else an internal error; the child is given the CP's pid."""
    seen: list[str] = []

    async def fake(team: object, argv: list[str], *, max_output: int) -> tuple[int, bytes]:
        seen.extend(argv)
        return status, out

    monkeypatch.setattr(tenant_threads, "run_child", fake)
    with pytest.raises(error) as raised:
        await template_import._read("team", tmp_path / "img.tar", tmp_path, 1 << 20)
    assert raised.value.message.startswith(message)
    assert seen[-1] == str(os.getpid())
