"""The gVisor memory watch's choice of victims (``guest_agent/memwatch.py``), on a modelled
sandbox: a fake clock, a process table and the usage gVisor would report. (The real watch,
against real hogs in real gVisor sandboxes: tests/integration/agent/test_gvisor.py and
tests/security/test_attack_session8_memwatch.py.)

CI once saw the shell started right after a hog's kill get SIGKILL too: the victim's memory was
still counted in use when the watch stopped waiting for it, and the shell was the largest
process left."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from warren.guest.guest_agent import memwatch

MiB = 1 << 20
LIMIT = 128 * MiB


@dataclass
class Sandbox:
    """Processes (pid → resident bytes) and what gVisor counts in use: the processes' memory,
    plus a victim's until ``free_after`` seconds past its kill."""

    procs: dict[int, int]
    free_after: float
    now: float = 0.0
    dying: dict[int, float] = field(default_factory=dict)  # pid → when its memory is freed
    allocating: tuple[int, int] | None = None  # pid, bytes per second
    killed: list[int] = field(default_factory=list)
    killed_at: list[float] = field(default_factory=list)
    dead_rss: dict[int, int] = field(default_factory=dict)

    def in_use(self) -> int:
        return sum(self.procs.values()) + sum(
            self.dead_rss[pid] for pid, at in self.dying.items() if self.now < at
        )

    def sleep(self, s: float) -> None:
        self.now += s
        if self.allocating:
            pid, rate = self.allocating
            self.procs[pid] += int(rate * s)

    def kill(self, pid: int, sig: int) -> None:
        assert sig == signal.SIGKILL
        self.killed.append(pid)
        self.killed_at.append(self.now)
        self.dead_rss[pid] = self.procs.pop(pid)
        self.dying[pid] = self.now + self.free_after
        if self.allocating and self.allocating[0] == pid:
            self.allocating = None

    def largest(self) -> tuple[int, int]:
        if not self.procs:
            return 0, 0
        pid = max(self.procs, key=lambda p: self.procs[p])
        return pid, self.procs[pid]


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    box = Sandbox(procs={}, free_after=0.05)
    monkeypatch.setattr(memwatch, "in_use", box.in_use)
    monkeypatch.setattr(memwatch, "largest", box.largest)
    monkeypatch.setattr(memwatch, "gone", lambda pid: pid not in box.procs)
    monkeypatch.setattr(memwatch.os, "kill", box.kill)
    monkeypatch.setattr(memwatch.time, "monotonic", lambda: box.now)
    monkeypatch.setattr(memwatch.time, "sleep", box.sleep)
    monkeypatch.setattr(memwatch, "log", lambda _: None)
    return box


@pytest.mark.parametrize("free_after", [0.05, 3.0, 8.0], ids=["50ms", "3s", "8s"])
def test_a_victim_freed_slowly_is_not_followed_by_an_innocent(sandbox: Sandbox, free_after: float) -> None:
    sandbox.free_after = free_after
    sandbox.procs.update({10: 200 * MiB, 11: 4 * MiB})  # the hog; a shell beside it
    memwatch.check(LIMIT)
    assert sandbox.killed == [10]
    for _ in range(100):  # the passes that follow, as the watch's loop makes them
        sandbox.sleep(memwatch.check(LIMIT))
    assert sandbox.killed == [10]  # the shell lives
    assert sandbox.in_use() == 4 * MiB


def test_another_allocator_while_a_victim_is_freed_is_next(sandbox: Sandbox) -> None:
    """Waiting for a victim's memory must not let a second allocator run on: growth past the
    lowest usage since the victim went ends the wait."""
    sandbox.free_after = 30.0
    sandbox.procs.update({10: 200 * MiB, 12: 16 * MiB, 11: 4 * MiB})
    sandbox.allocating = (12, 1 << 30)
    for _ in range(100):
        if len(sandbox.killed) == 2:
            break
        sandbox.sleep(memwatch.check(LIMIT))
    assert sandbox.killed == [10, 12]
    first, second = sandbox.killed_at
    assert second - first < 0.1  # ~32 MiB of growth at 1 GiB/s, not the whole wait
    assert 11 in sandbox.procs


def test_a_child_the_guest_forked_and_not_yet_execd_is_never_the_victim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until its exec a command's child holds the guest's own pages (copy-on-write), often the
    largest resident set of the sandbox: killing it frees nothing and ends the command before
    it ran (users.fork_exec lists it in ``users.starting`` meanwhile)."""
    from warren.guest.guest_agent import users

    rss = {1: 300 * MiB, 40: 30 * MiB, 41: 2 * MiB}  # the guest, a starting child, a command
    proc = SimpleNamespace(listdir=lambda _: [*map(str, rss), "self", "net"], sysconf=lambda _: 4096)
    monkeypatch.setattr(memwatch, "os", proc)
    monkeypatch.setattr(
        memwatch, "read_small", lambda path: f"9 {rss[int(path.split('/')[2])] // 4096} 0".encode()
    )
    assert memwatch.largest() == (40, 30 * MiB)
    try:
        users.starting.add(40)
        assert memwatch.largest() == (41, 2 * MiB)
        users.starting.add(41)
        assert memwatch.largest() == (0, 0)  # nothing to kill: the watch waits (check: no victim)
    finally:
        users.starting.difference_update({40, 41})
