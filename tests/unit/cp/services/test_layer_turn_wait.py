"""How long a create's layer pushes wait for install turns, and how many of a team's may wait
(cp/services/layers.py, docs/templates.md §2 "Waiting for a turn"); the attack over real agents
is tests/security/test_attack_session14_layer_turns.py."""

from __future__ import annotations

import asyncio

import pytest

from warren.config import Settings
from warren.cp.services import layers


def test_a_teams_waiting_pushes_are_counted_and_past_the_count_refused_at_once() -> None:
    with layers._counted("team-a", 2) as done_1, layers._counted("team-a", 2):
        with pytest.raises(layers.LayerInstallBusy) as refused, layers._counted("team-a", 2):
            pass
        assert refused.value.team_full and refused.value.retry_after == layers.BUSY_RETRY_AFTER_S
        with layers._counted("team-b", 2):  # another team's count is its own
            pass
        done_1()  # admitted by its host: no longer waiting
        done_1()  # idempotent
        with layers._counted("team-a", 2):
            pass
    assert layers._waiting["team-a"] == 0


def test_uncounted_pushes_are_never_refused() -> None:
    with layers._counted("t", 0), layers._counted("t", 0):
        assert "t" not in layers._waiting


async def test_a_creates_wait_on_a_further_host_is_what_is_left_but_a_few_seconds_at_least() -> None:
    s = Settings(layer_turn_wait_s=60, layer_turn_waiters_per_team=3)
    assert layers.create_wait(s) == layers.TurnWait(60, 3)
    now = asyncio.get_running_loop().time()
    assert layers.create_wait(s, now + 30).seconds == pytest.approx(30, abs=1)
    assert layers.create_wait(s, now - 10).seconds == layers._FURTHER_HOST_WAIT_S
    short = Settings(layer_turn_wait_s=2, layer_turn_waiters_per_team=3)
    assert layers.create_wait(short, now - 10).seconds == 2


def test_builds_and_pools_wait_longer_and_are_not_counted() -> None:
    assert layers.TurnWait() == layers.TurnWait(layers.BACKGROUND_WAIT_S, 0)
    assert Settings().layer_turn_wait_s < layers.BACKGROUND_WAIT_S
