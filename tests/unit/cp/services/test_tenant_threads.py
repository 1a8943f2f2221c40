"""The CP's turns for tenant-sized work in child processes: bounded, fair between teams, and a
cancelled caller holds its turn until its child is reaped (cp/services/tenant_threads.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

import pytest

from warren.cp.services import template_import, tenant_threads
from warren.cp.services.tenant_threads import ChildExit, TenantThreads, child_output
from warren.errors import InternalError, InvalidRequest, WarrenError

_GATED = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)\nprint(sys.argv[2])"


async def test_a_burst_queues_behind_itself(tmp_path: Path) -> None:
    """One turn: a's burst holds it and queues two more; b, come after them, is served next."""
    threads, gate = TenantThreads(1), tmp_path / "gate"
    order: list[str] = []

    async def work(team: str) -> str:
        argv = [sys.executable, "-c", _GATED, str(gate), team]
        out = (await threads.run_child(team, argv, max_output=64)).stdout
        order.append(out.decode().strip())
        return team

    burst = [asyncio.ensure_future(work("a")) for _ in range(3)]
    await asyncio.sleep(0.05)
    other = asyncio.ensure_future(work("b"))
    await asyncio.sleep(0.05)
    assert threads.turns.running == 1 and threads.turns.waiting == 3
    gate.touch()
    assert await asyncio.gather(*burst, other) == ["a"] * 3 + ["b"]
    assert order == ["a", "b", "a", "a"]  # the team served longest ago (never: b) goes first


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
    status, out, _ = await child_output(
        [sys.executable, "-c", "import os; print(sorted(os.environ))"], 1 << 16
    )
    assert status == 0 and b"WARREN_JWT_SECRET" not in out


async def test_the_log_says_how_a_child_failed(caplog: pytest.LogCaptureFixture) -> None:
    """A child that dies (a traceback) is logged with its stderr's last lines, the rest dropped
    (a chatty child never blocks on its full pipe)."""
    crash = "import sys; sys.stderr.write('x' * 200000); raise SystemExit('the reason')"
    with pytest.raises(InternalError):
        await tenant_threads.child_answer(
            "team", [sys.executable, "-c", crash], max_output=1 << 16, answer="ok", parse=str,
            refusal=InternalError, log=logging.getLogger("test"), event="child_failed", failure="f",
        )  # fmt: skip
    [record] = [r for r in caplog.records if "event=child_failed" in r.getMessage()]
    assert "status=1" in record.getMessage() and "the reason" in record.getMessage()
    assert len(record.getMessage()) < 3 * tenant_threads.STDERR_TAIL


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

    async def fake(team: object, argv: list[str], *, max_output: int) -> ChildExit:
        seen.extend(argv)
        return ChildExit(status, out, b"")

    monkeypatch.setattr(tenant_threads, "run_child", fake)
    with pytest.raises(error) as raised:
        await template_import._read("team", tmp_path / "img.tar", tmp_path, 1 << 20)
    assert raised.value.message.startswith(message)
    assert seen[-1] == str(os.getpid())
