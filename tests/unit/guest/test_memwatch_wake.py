"""The gVisor memory watch with the host's wake (``guest_agent/memwatch.py``,
``agent/runtime/gvisor_memwake.py``), on a modelled clock: an idle sandbox sleeps a second at a
time, and a hog starting at any moment of that sleep is still killed near the limit, as long as
each record of a threshold crossed arrives within ``WAKE_LATENCY``. And the host's count: memory
only the host sees (the Sentry's buffers) kills once per growth near the cgroup's limit."""

from __future__ import annotations

import os
import signal
import time

import pytest

from warren.agent.runtime.gvisor_memwake import RECORD, step
from warren.guest.guest_agent import memwatch

MiB = 1 << 20
IDLE = 20 * MiB
SENTRY = 25 * MiB  # the Sentry and Gofer themselves: in the host cgroup, not in the guest's count
OVERSHOOT = 16 * MiB  # as tests/unit/guest/test_memwatch_interval.py


def first_kill(monkeypatch: pytest.MonkeyPatch, limit: int, rate: float, start: float) -> int:
    """The watch's loop on a modelled clock, the host's thresholds every ``step`` of the cgroup's
    usage (in use + the Sentry), each crossing's record seen ``WAKE_LATENCY`` later; the usage
    the first kill saw."""
    host_limit = limit + (96 << 20)
    spacing = step(host_limit)
    now, seen = 0.0, []
    usage = lambda t: IDLE + int(rate * max(0.0, t - start))  # noqa: E731
    monkeypatch.setattr(memwatch, "in_use", lambda: usage(now))
    monkeypatch.setattr(memwatch, "largest", lambda: (7, usage(now)))
    monkeypatch.setattr(memwatch, "_wait_freed", lambda pid, limit: None)
    monkeypatch.setattr(memwatch, "log", lambda _: None)
    monkeypatch.setattr(memwatch.os, "kill", lambda pid, sig: seen.append(usage(now)))

    def next_record(t: float) -> float:
        """When the record of the next rung crossed after ``t`` is seen (beats aside)."""
        rung = ((usage(t) + SENTRY) // spacing + 1) * spacing
        crossed = start + (rung - SENTRY - IDLE) / rate
        return max(crossed, t) + memwatch.WAKE_LATENCY

    record = (IDLE + SENTRY, host_limit, spacing)  # a beat: the wake is trusted
    while not seen:
        pause = memwatch.check(limit, memwatch.covered(record))
        now = min(now + pause, next_record(now))
        record = (usage(now) + SENTRY, host_limit, spacing)
        assert now < 10
    return seen[0]


@pytest.mark.parametrize("rate_gib", [1.6, 2.8, 4.0], ids=["python-loop", "mmap-populate", "max-rate"])
@pytest.mark.parametrize("limit_mib", [256, 512, 4096])
def test_a_hog_starting_in_a_long_sleep_is_killed_near_the_limit(
    monkeypatch: pytest.MonkeyPatch, rate_gib: float, limit_mib: int
) -> None:
    limit, rate = limit_mib * MiB, rate_gib * (1 << 30)
    worst = max(first_kill(monkeypatch, limit, rate, start=ms / 1000) for ms in range(0, 1000, 7))
    # At MAX_RATE itself, the polls' own MIN_INTERVAL allows 20 MiB (as without the wake).
    over = max(OVERSHOOT, int(rate * memwatch.MIN_INTERVAL) + MiB)
    assert limit < worst <= limit + over, (worst - limit) // MiB


def test_an_idle_sandbox_sleeps_a_second_only_while_the_wake_is_vouched_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memwatch, "in_use", lambda: IDLE)
    limit = 256 * MiB
    far = (IDLE + SENTRY, limit + (96 << 20), step(limit))
    assert memwatch.check(limit, memwatch.covered(far)) == memwatch.LIMIT_REREAD
    # No record (none yet, or no beat lately): the rate's interval, 17 reads a second.
    assert memwatch.check(limit, memwatch.covered(None)) == pytest.approx(1 / 17.5, rel=0.05)
    # The host cgroup itself within a step and a wake's allocation of its limit: polls too.
    near = (limit + 20 * MiB, limit + (96 << 20), step(limit))
    assert memwatch.covered(near) == 0
    # Near the limit in the guest's own count: the interval again.
    monkeypatch.setattr(memwatch, "in_use", lambda: limit - 64 * MiB)
    assert memwatch.check(limit, memwatch.covered(far)) < 0.02


def test_the_host_count_kills_once_per_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    host_limit, spacing = 224 * MiB, step(224 * MiB)
    killed: list[int] = []
    monkeypatch.setattr(memwatch, "largest", lambda: (40 + len(killed), 30 * MiB))
    monkeypatch.setattr(memwatch, "log", lambda _: None)

    def kill(pid: int, sig: int) -> None:
        assert sig == signal.SIGKILL
        killed.append(pid)

    monkeypatch.setattr(memwatch.os, "kill", kill)
    monkeypatch.setattr(memwatch, "_host_low", 0)
    monkeypatch.setattr(memwatch, "_host_prev", 0)
    in_use = [64 * MiB]  # the guest's own count: far under the limit (the Sentry's buffers)
    monkeypatch.setattr(memwatch, "in_use", lambda: in_use[0])
    check = lambda used_mib: memwatch.host_check((used_mib * MiB, host_limit, spacing), 128 * MiB)  # noqa: E731
    margin = memwatch.HOST_MARGIN
    assert margin == 40 * MiB  # the figures below: the margin's line at 184 MiB
    for used_mib in (150, 170, 183):
        check(used_mib)
    assert killed == []
    check(190)
    assert killed == [40]
    # The Sentry keeps the victim's freed heap, about the margin's line: a shell started then
    # (a few MiB) is no new hog, nor anything falling or level.
    for used_mib in (185, 181, 188, 183, 188, 188):
        check(used_mib)
    assert killed == [40]
    check(203)  # half the way from the lowest since (181) to the limit: another hog
    assert killed == [40, 41]
    check(214)  # half of what is left past the lowest since (203), not a shell's size
    assert killed == [40, 41]
    check(220)  # a shell's size past it
    assert killed == [40, 41, 42]
    check(152)  # back down, a GROWTH under the line: the next is a new episode
    check(183)
    check(185)
    assert killed == [40, 41, 42, 43]
    check(100)
    check(150)
    check(215)
    assert killed == [40, 41, 42, 43, 44]
    check(160)  # still in the episode (over 152): its low is 160 now, the next kill past 192
    check(191)
    assert killed == [40, 41, 42, 43, 44]
    check(193)
    check(195)
    assert killed == [40, 41, 42, 43, 44, 45]
    # Rising while the guest's own count is over the limit: check() is the one killing.
    check(150)
    in_use[0] = 129 * MiB
    check(215)
    assert killed == [40, 41, 42, 43, 44, 45]


def test_wait_reads_the_newest_record_and_ignores_garbage() -> None:
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        os.write(w, RECORD.pack(1, 100, 4) + RECORD.pack(2, 100, 4))
        assert memwatch.wait(r, 1.0) == (2, 100, 4)
        assert memwatch.wait(r, 0.01) is None  # nothing more
        # A backlog (beats written while the sandbox was paused): the newest is taken.
        for n in range(1000):
            os.write(w, RECORD.pack(n, 100, 4))
        assert memwatch.wait(r, 1.0) == (999, 100, 4)
        os.write(w, b"xyz")  # sandbox root writing to PID 1's stdin: not a record
        assert memwatch.wait(r, 1.0) is None
        os.write(w, RECORD.pack(5, 4, 4))  # a step not under the limit
        assert memwatch.wait(r, 1.0) is None
    finally:
        os.close(r)
        os.close(w)
    t0 = time.monotonic()
    assert memwatch.wait(-1, 0.01) is None  # no pipe: a sleep
    assert time.monotonic() - t0 >= 0.01
