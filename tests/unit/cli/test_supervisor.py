"""``warren up``'s supervisor with real child processes: a child with a restart policy is started
again after it dies (with a growing delay), given up on after repeated fast crashes while the
rest keeps running; any other child dying still stops the platform."""

from __future__ import annotations

import logging
import tempfile
import threading
import time

import pytest

from warren.cli.supervisor import ProcessChild, RestartPolicy, Supervisor


def test_restart_policy_backs_off_and_gives_up_only_on_fast_crashes() -> None:
    p = RestartPolicy(give_up_after=4, fast_s=60, base_delay_s=1, max_delay_s=5)
    assert [p.after_exit(1), p.after_exit(1), p.after_exit(1)] == [1, 2, 4]
    assert p.after_exit(1) is None  # the 4th crash in a row, each right after starting
    p = RestartPolicy(give_up_after=3, fast_s=60, base_delay_s=1, max_delay_s=5)
    for _ in range(10):  # a crash after a good long run starts a new count
        assert p.after_exit(1) in (1, 2)
        assert p.after_exit(3600) == 1
    assert p.restarts == 20
    p = RestartPolicy(give_up_after=100, base_delay_s=1, max_delay_s=5)
    assert max(p.after_exit(0) or 0 for _ in range(10)) == 5


def _run(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(sup.wait()), daemon=True)
    t.start()
    return t, codes


def _until(cond: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_a_crashing_child_is_restarted_then_given_up_on_while_the_rest_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="warren.up")
    sup = Supervisor()
    steady = ProcessChild("steady", ["sleep", "60"])
    policy = RestartPolicy(give_up_after=3, fast_s=60, base_delay_s=0.05, max_delay_s=0.1)
    crashy = ProcessChild("agent", ["sh", "-c", "exit 3"], restart_policy=policy)
    sup.start(steady)
    sup.start(crashy)
    t, codes = _run(sup)
    try:
        _until(lambda: "agent" in sup.given_up)
        text = caplog.text
        assert "event=agent_restarted exit_code=3 attempt=1" in text
        assert "event=agent_restarted exit_code=3 attempt=2" in text
        assert "event=agent_gave_up exit_code=3 crashes=3" in text
        assert "not restarting it" in text
        assert steady.poll() is None and t.is_alive() and not codes  # the platform carries on
    finally:
        sup.stopping.set()
        t.join(10)
        sup.shutdown()
    assert codes == [0]
    assert steady.process is None


def test_a_child_that_runs_again_after_a_crash_is_watched_again() -> None:
    sup = Supervisor()
    marker_policy = RestartPolicy(give_up_after=3, base_delay_s=0.05)
    # Crashes once (no marker yet), then keeps running.
    script = 'if [ -e "$0.ran" ]; then exec sleep 60; fi; touch "$0.ran"; exit 9'
    with tempfile.TemporaryDirectory() as d:
        child = ProcessChild("agent", ["sh", "-c", script, f"{d}/x"], restart_policy=marker_policy)
        sup.start(child)
        t, codes = _run(sup)
        try:
            _until(lambda: marker_policy.restarts == 1 and child.poll() is None and child.process is not None)
            time.sleep(0.5)
            assert child.poll() is None and marker_policy.restarts == 1 and not sup.given_up
        finally:
            sup.stopping.set()
            t.join(10)
            sup.shutdown()
    assert codes == [0]


def test_any_other_child_dying_still_stops_the_platform() -> None:
    sup = Supervisor()
    sup.start(ProcessChild("cp", ["sh", "-c", "exit 4"]))
    t, codes = _run(sup)
    t.join(10)
    sup.shutdown()
    assert codes == [1]
