"""The per-owner stream bound (services/stream_slots.py, session 15): the streams of all the
teams one account owns count together. The attack it answers is
tests/security/test_attack_session15_owner_bounds.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from warren import ids
from warren.config import Settings
from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.errors import TooManyRequests

PER_TEAM, PER_OWNER = 3, 5


@pytest.fixture(autouse=True)
def owner_limit() -> Iterator[None]:
    stream_slots.set_owner_limit(PER_OWNER)
    yield
    stream_slots.set_owner_limit(Settings.model_fields["max_streams_per_owner"].default)


def _ctx(team: uuid.UUID, owner: uuid.UUID | None) -> AuthContext:
    return AuthContext(kind="api_key", team_id=team, owner_id=owner)


def test_an_owners_teams_share_the_bound_and_another_owner_does_not() -> None:
    owner, team_a, team_b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    held = [stream_slots.Slot() for _ in range(PER_OWNER)]
    for i, s in enumerate(held):
        s.claim(_ctx(team_a if i < PER_TEAM else team_b, owner), PER_TEAM)
    with pytest.raises(TooManyRequests) as e, stream_slots.Slot() as extra:
        extra.claim(_ctx(team_b, owner), PER_TEAM)  # team_b holds 2 of its 3: the owner's bound refuses
    assert e.value.code == "too_many_streams_per_owner" and e.value.extra == {"limit": PER_OWNER}
    assert "max_streams_per_owner" in e.value.message
    assert stream_slots.open_streams(team_b) == 2 and stream_slots.owned_streams(owner) == PER_OWNER
    with stream_slots.Slot() as other:
        other.claim(_ctx(uuid.uuid4(), uuid.uuid4()), PER_TEAM)
    held[0].release()
    with stream_slots.Slot() as again:
        again.claim(_ctx(team_b, owner), PER_TEAM)
    for s in held:
        s.release()
    assert stream_slots.owned_streams(owner) == 0 and stream_slots.open_streams(team_a) == 0


def test_the_team_cap_still_comes_first() -> None:
    owner, team = uuid.uuid4(), uuid.uuid4()
    held = [stream_slots.Slot() for _ in range(PER_TEAM)]
    for s in held:
        s.claim(_ctx(team, owner), PER_TEAM)
    with pytest.raises(TooManyRequests) as e, stream_slots.Slot() as extra:
        extra.claim(_ctx(team, owner), PER_TEAM)
    assert e.value.code == "too_many_streams"
    for s in held:
        s.release()
    assert stream_slots.owned_streams(owner) == 0


def test_the_platform_team_has_no_owner_bound() -> None:
    held = [stream_slots.Slot() for _ in range(PER_OWNER + 1)]
    for s in held:
        s.claim(_ctx(ids.PLATFORM_TEAM_ID, None), PER_OWNER + 1)
    for s in held:
        s.release()
    assert stream_slots.open_streams(ids.PLATFORM_TEAM_ID) == 0


def test_a_context_without_an_owner_counts_as_its_team() -> None:
    """Never bounded less than per team: the team stands for its owner."""
    team = uuid.uuid4()
    with stream_slots.Slot() as s:
        s.claim(_ctx(team, None), PER_TEAM)
        assert stream_slots.owned_streams(team) == 1
    assert stream_slots.owned_streams(team) == 0
