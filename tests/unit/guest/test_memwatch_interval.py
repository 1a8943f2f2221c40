"""The gVisor memory watch's poll interval (``guest_agent/memwatch.py``) against a hog that starts
at any moment of an idle sandbox's sleep, at the allocation rates measured under gVisor's ptrace
platform (bench/gvisor_memwatch.py). Session 15: with ``MAX_RATE`` at 1 GiB/s a 256 MiB sandbox
slept ~230 ms when idle, and a hog at 1.6-2.4 GiB/s passed the limit and the whole 96 MiB of
host headroom in between (1 run in 4 of tests/security/test_attack_session8_memwatch.py's
nobody case): the host's OOM killer ended the sandbox."""

from __future__ import annotations

import signal

import pytest

from warren.guest.guest_agent import memwatch

MiB = 1 << 20
IDLE = 20 * MiB  # the guest, a shell: what an idle 256 MiB sandbox counts in use
# The most a check may come past the limit: one MIN_INTERVAL at the fastest rate measured, far
# inside the headroom (96 MiB, of which the Sentry's own ~20 are not in the guest's count).
OVERSHOOT = 16 * MiB


def first_kill(monkeypatch: pytest.MonkeyPatch, limit: int, rate: float, start: float) -> int:
    """Run the watch's passes on a modelled clock; the usage its first kill saw."""
    now, seen = 0.0, []
    usage = lambda: IDLE + int(rate * max(0.0, now - start))  # noqa: E731
    monkeypatch.setattr(memwatch, "in_use", usage)
    monkeypatch.setattr(memwatch, "largest", lambda: (7, usage()))
    monkeypatch.setattr(memwatch, "_wait_freed", lambda pid, limit: None)
    monkeypatch.setattr(memwatch, "log", lambda _: None)

    def kill(pid: int, sig: int) -> None:
        assert (pid, sig) == (7, signal.SIGKILL)
        seen.append(usage())

    monkeypatch.setattr(memwatch.os, "kill", kill)
    while not seen:
        now += memwatch.check(limit)
        assert now < 10
    return seen[0]


@pytest.mark.parametrize("rate_gib", [1.6, 2.4, 2.8], ids=["python-loop", "burst", "mmap-populate"])
@pytest.mark.parametrize("limit_mib", [128, 256, 512, 4096])
def test_a_hog_starting_at_any_moment_is_killed_near_the_limit(
    monkeypatch: pytest.MonkeyPatch, rate_gib: float, limit_mib: int
) -> None:
    limit, rate = limit_mib * MiB, rate_gib * (1 << 30)
    # The hog's start swept over one whole idle interval, 1 ms apart.
    worst = max(first_kill(monkeypatch, limit, rate, start=ms / 1000) for ms in range(0, 260))
    assert limit < worst <= limit + OVERSHOOT, (worst - limit) // MiB


@pytest.mark.parametrize(("limit_mib", "reads"), [(256, 17.5), (512, 8.6), (1024, 4.2), (4096, 4.0)])
def test_what_an_idle_sandbox_pays(monkeypatch: pytest.MonkeyPatch, limit_mib: int, reads: float) -> None:
    """The price of the rate: reads a second of an idle sandbox (each ~1 ms of host CPU under
    ptrace, bench/gvisor_memwatch.py), highest in the smallest sandboxes."""
    monkeypatch.setattr(memwatch, "in_use", lambda: IDLE)
    assert 1 / memwatch.check(limit_mib * MiB) == pytest.approx(reads, rel=0.05)
