"""What counts as "paused for its own snapshot" (``services/snapshot_hold.py``): the mark, and
only while its snapshot keeps it fresh; and which verbs wait it out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from warren.cp.services import snapshots
from warren.cp.services.snapshot_hold import BEAT_S, HOLD_S, STALE_S, TRANSIENT, held, waits

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _row(status: str, paused_state: str | None, age_s: float) -> dict[str, object]:
    return {"status": status, "paused_state": paused_state, "last_updated": NOW - timedelta(seconds=age_s)}


def test_only_the_snapshots_mark_holds_and_only_within_its_bound() -> None:
    assert held(_row("paused", TRANSIENT, 0), NOW)
    assert held(_row("paused", TRANSIENT, STALE_S - 1), NOW)
    assert not held(_row("paused", TRANSIENT, STALE_S), NOW)  # its CP died mid-snapshot
    for state in (None, "memory", "disk"):  # a user's pause, an auto-pause, a checkpoint
        assert not held(_row("paused", state, 0), NOW)
    for status in ("running", "stopped", "missing", "error"):
        assert not held(_row(status, TRANSIENT, 0), NOW)
    assert not held(None, NOW)


def test_the_bounds_cover_the_snapshot_and_its_resume() -> None:
    assert HOLD_S >= snapshots.CREATE_BUDGET_S + 120  # export + the resume's agent timeout
    assert STALE_S >= 4 * BEAT_S  # a live snapshot's mark is not taken for a dead one's


def test_only_verbs_that_need_it_running_wait() -> None:
    assert waits(("running",))
    assert not waits(("running", "paused"))  # snapshots, metrics, watch polls: paused will do
    assert not waits(("paused",))  # a resume
    assert not waits(None)
