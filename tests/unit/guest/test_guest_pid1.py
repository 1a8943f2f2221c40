"""The guest as PID 1 of its own pid namespace: orphan reaping, exit statuses, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.guest.guest_helpers import RunningGuest, wait_until

pytestmark = pytest.mark.root


def _can_unshare_pid() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a pid namespace (unshare --pid)"
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        return f"unshare --pid is not permitted here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture
def init_guest(start_guest: Callable[..., RunningGuest]) -> RunningGuest:
    reason = _can_unshare_pid()
    if reason:
        pytest.skip(reason)
    # --kill-child: if unshare is killed, the guest (and with it the namespace) dies too.
    return start_guest("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")


def _proc_state(client_out: bytes) -> str:
    return client_out.decode().rsplit(")", 1)[1].split()[0]


async def test_guest_is_pid_1(init_guest: RunningGuest) -> None:
    r = await init_guest.client.exec("sh", ["-c", "echo $PPID; cat /proc/1/cmdline"])
    ppid, cmdline = r.stdout.split(b"\n", 1)
    assert ppid == b"1"  # its children are its own: the guest is the namespace's init
    assert b"guest.py" in cmdline


async def test_double_forked_orphan_is_reaped(init_guest: RunningGuest) -> None:
    c = init_guest.client
    # The subshell forks sleep and exits at once: sleep is orphaned and re-parented to PID 1.
    # (Long enough to be seen alive below even on a loaded machine; 0.3 s was not always.)
    r = await c.exec("sh", ["-c", "(sleep 5 >/dev/null 2>&1 & echo $!)"])
    orphan = int(r.stdout)
    r = await c.exec("cat", [f"/proc/{orphan}/stat"])
    assert r.exit_code == 0 and _proc_state(r.stdout) != "Z"
    stat_line = r.stdout.decode()
    assert stat_line.rsplit(")", 1)[1].split()[1] == "1", "the orphan should now belong to PID 1"
    gone = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        r = await c.exec("cat", [f"/proc/{orphan}/stat"])
        if r.exit_code != 0:
            gone = True
            break
        # Without reaping it stays a zombie ("Z") that holds its pid (and a pids.max slot).
    assert gone, f"orphan {orphan} was never reaped (last state {_proc_state(r.stdout)})"


async def test_own_exit_statuses_survive_orphan_reaping(init_guest: RunningGuest) -> None:
    c = init_guest.client
    # Each command leaves an orphan that dies around the time its parent does: the reaper
    # collects both and must still attribute every exit code to the right command.
    script = "(sleep 0.0$1 >/dev/null 2>&1 &); sleep 0.0$1; exit $2"
    results = await asyncio.gather(
        *(c.exec("sh", ["-c", script, "sh", str(i % 10), str(i)]) for i in range(40))
    )
    assert [r.exit_code for r in results] == list(range(40))
    # Once the orphans' sleeps are over and each SIGCHLD handled, no zombie is left (polled: a
    # loaded machine may take longer than the 0.2 s once waited here).
    deadline = time.monotonic() + 30
    while True:
        r = await c.exec("sh", ["-c", "cat /proc/[0-9]*/stat 2>/dev/null"])
        zombies = [ln for ln in r.stdout.decode().splitlines() if _proc_state(ln.encode()) == "Z"]
        if not zombies or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert zombies == []


async def test_sigterm_to_init_is_forwarded_to_every_process(
    init_guest: RunningGuest, tmp_path: Path
) -> None:
    c = init_guest.client
    marker, trapping = tmp_path / "orphan-got-term", tmp_path / "orphan-trapping"
    # An orphan the guest never started: only a namespace-wide forward reaches it.
    script = f'trap "echo term > {marker}; exit 0" TERM; touch {trapping}; while :; do sleep 0.05; done'
    r = await c.exec("sh", ["-c", f"(sh -c '{script}' >/dev/null 2>&1 &)"])
    assert r.exit_code == 0
    # Its trap is set before the signal comes (a fixed 0.3 s was not always enough under load).
    assert await wait_until(trapping.exists)
    # `unshare --fork` waits for its child, the guest; signal the guest itself.
    children = Path(f"/proc/{init_guest.pid}/task/{init_guest.pid}/children").read_text().split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGTERM)
    assert await asyncio.to_thread(init_guest.proc.wait, 10) == 0
    assert marker.read_text() == "term\n"
