"""The socket watchdog's enforcement workers (runtime/enforce_workers.py): bounded, one job a
sandbox, turns fair between teams. The attack is in
tests/security/test_attack_session22_watchdog_share.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from warren.agent.runtime.enforce_workers import Workers


def _until(ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not ok():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _workers_alive() -> int:
    return sum(t.name == "socket-ceiling" for t in threading.enumerate())


class Held:
    """Jobs that run until released, in the order they started."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, threading.Event] = {}

    def job(self, k: str) -> Callable[[], None]:
        self.release[k] = threading.Event()

        def run() -> None:
            self.started.append(k)
            self.release[k].wait(30)

        return run

    def free(self, *keys: str) -> None:
        for k in keys or tuple(self.release):
            self.release[k].set()


def test_workers_are_bounded_one_job_a_sandbox_and_the_oldest_waiting_goes_first() -> None:
    _until(lambda: _workers_alive() == 0)  # an earlier test's, ending
    pool, held = Workers(2), Held()
    assert [pool.submit(k, held.job(k)) for k in "abcd"] == [0, 0, 1, 2]  # c and d wait
    _until(lambda: len(held.started) == 2)
    assert sorted(held.started) == ["a", "b"] and all(k in pool for k in "abcd")
    assert _workers_alive() == 2
    held.free("b")
    _until(lambda: len(held.started) == 3)
    assert held.started[2] == "c" and "b" not in pool and "d" in pool  # the oldest waiting first
    held.free()
    assert pool.join(30)
    assert held.started[3] == "d" and not any(k in pool for k in "abcd")
    _until(lambda: _workers_alive() == 0)  # the threads end with the queue


def test_a_failed_job_frees_its_sandbox(caplog: pytest.LogCaptureFixture) -> None:
    pool = Workers(1)

    def boom() -> None:
        raise RuntimeError("boom")

    assert pool.submit("sb-x", boom) == 0
    assert pool.join(30) and "sb-x" not in pool
    assert "event=background_error task=socket_ceiling sandbox=sb-x" in caplog.text


def test_one_team_holds_all_workers_but_one_and_another_teams_sandbox_starts_at_once() -> None:
    pool, held = Workers(4), Held()
    assert [pool.submit(f"a{i}", held.job(f"a{i}"), "team-a") for i in range(3)] == [0, 0, 0]
    # Once they run (submitted before, a fourth could start a thread that finds A at its cap
    # and ends: a moment when the free worker is not yet free again, as under a loaded CI).
    _until(lambda: len(held.started) == 3)
    waits = [pool.submit(f"a{i}", held.job(f"a{i}"), "team-a") for i in range(3, 6)]
    assert all(waits), waits  # the fourth waits: one worker free, but A is at its cap
    assert pool.running("team-a") == 3
    assert pool.submit("b0", held.job("b0"), "team-b") == 0  # the free worker: no wait
    _until(lambda: "b0" in held.started)
    held.free()
    assert pool.join(30)
    assert sorted(held.started) == ["a0", "a1", "a2", "a3", "a4", "a5", "b0"]


def test_a_free_worker_takes_the_team_holding_the_fewest_before_an_older_waiter() -> None:
    """A holds 2 of 3 (its cap), B 1; A's third waits first, then B's second and C's first.
    One of A's ends: C's (its team holds none) starts before A's and B's older ones; then, A
    and B holding one each, the longest waiting (A's) before B's."""
    pool, held = Workers(3), Held()
    for sid, team in [("a0", "A"), ("a1", "A"), ("b0", "B")]:
        assert pool.submit(sid, held.job(sid), team) == 0
    _until(lambda: len(held.started) == 3)
    assert pool.submit("a2", held.job("a2"), "A") == 1
    assert pool.submit("b1", held.job("b1"), "B") == 2
    assert pool.submit("c0", held.job("c0"), "C") == 3
    held.free("a0")
    _until(lambda: len(held.started) == 4)
    assert held.started[3] == "c0"
    held.free("c0")
    _until(lambda: len(held.started) == 5)
    assert held.started[4] == "a2"
    held.free()
    assert pool.join(30)
    assert held.started[5] == "b1"


def test_a_sandbox_without_a_team_is_a_team_of_its_own() -> None:
    pool, held = Workers(2), Held()
    assert [pool.submit(k, held.job(k)) for k in "ab"] == [0, 0]  # not one team capped at 1
    _until(lambda: len(held.started) == 2)
    held.free()
    assert pool.join(30)


def test_a_dropped_waiter_never_runs() -> None:
    pool, held = Workers(2), Held()
    assert pool.submit("a0", held.job("a0"), "A") == 0
    assert pool.submit("a1", held.job("a1"), "A") == 1  # A's cap is 1 of 2
    pool.drop({"a0"})
    assert "a1" not in pool
    held.free()
    assert pool.join(30)
    assert held.started == ["a0"]
