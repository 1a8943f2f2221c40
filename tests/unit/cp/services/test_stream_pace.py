"""A stream's budget of messages that hand the process no input (services/stream_pace.py), on
the clock the tests move. The attack it answers is tests/security/test_attack_session34_stream_frames.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from warren import clock
from warren.cp.services.stream_pace import BURST, PER_S, REFUSED_COST, FramePace
from warren.errors import TooManyRequests


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    clock.reset()
    yield
    clock.reset()


def test_the_burst_is_taken_then_the_next_message_is_refused() -> None:
    pace = FramePace()
    for _ in range(BURST):
        pace.take()
    with pytest.raises(TooManyRequests) as e:
        pace.take()
    assert e.value.code == "too_many_messages" and "the stream is ended" in str(e.value)


def test_tokens_come_back_with_time_up_to_the_burst() -> None:
    pace = FramePace()
    for _ in range(BURST):
        pace.take()
    clock.advance(10 / PER_S)
    for _ in range(10):
        pace.take()
    with pytest.raises(TooManyRequests):
        pace.take()
    clock.advance(3600)  # an hour idle gives back the burst, not more
    for _ in range(BURST):
        pace.take()
    with pytest.raises(TooManyRequests):
        pace.take()


def test_a_refused_frame_costs_its_share() -> None:
    pace = FramePace()
    for _ in range(BURST // REFUSED_COST):
        pace.take(REFUSED_COST)
    with pytest.raises(TooManyRequests):
        pace.take(REFUSED_COST)


def test_a_message_refused_by_the_budget_takes_nothing() -> None:
    pace = FramePace(burst=2, per_s=1.0)
    pace.take()
    with pytest.raises(TooManyRequests):
        pace.take(5)
    pace.take()  # the one token left is still there


def test_a_clock_moved_back_takes_no_tokens() -> None:
    clock.advance(60)
    pace = FramePace()
    clock.reset()
    pace.take(BURST)
