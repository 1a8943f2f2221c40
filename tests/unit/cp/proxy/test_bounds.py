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


def test_connections_without_credentials_hold_at_most_half_of_each_share() -> None:
    t1, t2, owner = _ids(3)[0], uuid.UUID(int=0x5E55_1017_0001), uuid.UUID(int=0x5E55_1017_0002)
    anonymous = [bounds.claim(t1, owner, per_team=4, per_owner=6, anonymous=True) for _ in range(3)]
    assert all(isinstance(c, bounds.Claim) for c in anonymous[:2])
    assert isinstance(anonymous[2], str) and "without credentials" in anonymous[2]
    # The team's members keep the other half.
    members = [bounds.claim(t1, owner, per_team=4, per_owner=6) for _ in range(2)]
    assert all(isinstance(c, bounds.Claim) for c in members)
    # The owner's other team: one more anonymous (3 of 6 owner-wide), then refused by the owner's half.
    more = [bounds.claim(t2, owner, per_team=4, per_owner=6, anonymous=True) for _ in range(2)]
    assert isinstance(more[0], bounds.Claim)
    assert isinstance(more[1], str) and "owner" in more[1]
    for c in [*anonymous[:2], *members, more[0]]:
        assert isinstance(c, bounds.Claim)
        c.release()
    assert bounds.open_for_team(t1) == 0 and bounds.open_for_owner(owner) == 0
    again = bounds.claim(t1, owner, per_team=4, per_owner=6, anonymous=True)
    assert isinstance(again, bounds.Claim)
    again.release()
