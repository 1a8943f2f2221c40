"""Proxied connections per team and per owning account (cp/proxy/bounds.py, session 16)."""

from __future__ import annotations

import uuid

from warren import ids
from warren.cp.proxy import bounds


def _ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=0x5E55_1016_0000 + i) for i in range(n)]


def test_a_team_and_an_owner_are_bounded_and_get_their_slots_back() -> None:
    t1, t2, t3, owner, other = _ids(5)
    held = [bounds.claim(t1, owner, per_team=2, per_owner=3) for _ in range(2)]
    assert all(isinstance(c, bounds.Claim) for c in held)
    refused = bounds.claim(t1, owner, per_team=2, per_owner=3)
    assert isinstance(refused, str) and "per team" in refused
    held.append(bounds.claim(t2, owner, per_team=2, per_owner=3))
    refused = bounds.claim(t3, owner, per_team=2, per_owner=3)
    assert isinstance(refused, str) and "owner" in refused
    assert isinstance(bounds.claim(t3, other, per_team=2, per_owner=3), bounds.Claim)  # another account
    for c in held:
        assert isinstance(c, bounds.Claim)
        c.release()
        c.release()  # once only
    assert bounds.open_for_team(t1) == 0 and bounds.open_for_owner(owner) == 0
    assert isinstance(bounds.claim(t3, owner, per_team=2, per_owner=3), bounds.Claim)


def test_the_platform_team_is_bounded_per_team_only() -> None:
    owner = _ids(1)[0]
    claims = [bounds.claim(ids.PLATFORM_TEAM_ID, owner, per_team=3, per_owner=1) for _ in range(3)]
    assert all(isinstance(c, bounds.Claim) for c in claims)
    assert bounds.open_for_owner(owner) == 0
    for c in claims:
        assert isinstance(c, bounds.Claim)
        c.release()
