"""An exec's ``last_active_at`` touch is skipped when the row already shows the current second
(sandbox_access.touch_due): the API shows seconds, so the touch would change nothing read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from warren.cp.services.sandbox_access import touch_due

SEEN = datetime(2026, 12, 3, 18, 0, 5, 250_000, tzinfo=UTC)
S = SEEN.replace(microsecond=0).timestamp()


@pytest.mark.parametrize(
    ("now_s", "due"),
    [
        (S + 0.25, False),  # the same instant
        (S + 0.999, False),  # later in the same second
        (S, False),  # earlier in the same second (another replica's clock)
        (S + 1.0, True),  # the next second
        (S + 3600.5, True),
        (S - 0.001, True),  # the second before
    ],
    ids=["same-instant", "same-later", "same-earlier", "next-second", "an-hour", "second-before"],
)
def test_touch_due(now_s: float, due: bool) -> None:
    assert touch_due(SEEN, now_s) is due


def test_a_row_never_touched_is_due() -> None:
    assert touch_due(None, S)
