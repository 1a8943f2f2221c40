"""Proxied connections per team and per owning account in this process (session 16).

The proxy bounds each sandbox's connections (``WARREN_PROXY_MAX_CONNS_PER_SANDBOX``, per
:class:`~warren.cp.proxy.app.Proxy`), but a team has many sandboxes and an account owns up to
``max_teams_per_user`` teams: the per-sandbox bound alone was multiplied by both. These counts
are the process's (the API's proxy and the E2B listener's share them, as they share its memory):
past ``proxy_max_conns_per_team`` or ``proxy_max_conns_per_owner`` the next connection is 429
``too_many_connections``, whichever of the account's sandboxes it is for.

The owner is the sandbox team's ``owner`` member, read with the sandbox
(``PreviewTarget.owner_id``); the platform team has none and is bounded per team only, as
``services/stream_slots.py`` does for streams.

Connections without a credential (a public port: anyone who knows the sandbox's id) count in
both totals too, but they alone may hold at most half of each (session 17): otherwise anyone
could hold a team's whole share through one public sandbox and leave its members' previews
of its private ports 429.
"""

from __future__ import annotations

import uuid
from collections import Counter

from warren import ids

# The event loop is single-threaded: no lock needed.
_teams: Counter[uuid.UUID] = Counter()
_owners: Counter[uuid.UUID] = Counter()
# The part of each count held by connections without a credential.
_anonymous_teams: Counter[uuid.UUID] = Counter()
_anonymous_owners: Counter[uuid.UUID] = Counter()


def open_for_team(team_id: uuid.UUID) -> int:
    return _teams[team_id]


def open_for_owner(owner_id: uuid.UUID) -> int:
    return _owners[owner_id]


class Claim:
    """One proxied connection's place in its team's and owner's counts, until :meth:`release`."""

    __slots__ = ("_anonymous", "_owner", "_team")

    def __init__(self, team: uuid.UUID, owner: uuid.UUID | None, anonymous: bool) -> None:
        self._team: uuid.UUID | None = team
        self._owner = owner
        self._anonymous = anonymous

    @property
    def pace_key(self) -> uuid.UUID:
        """Whose share of the loop the connection's events take (pace.py): its owner's, else
        its team's."""
        key = self._owner or self._team
        assert key is not None, "a released claim"
        return key

    def release(self) -> None:
        if self._team is None:
            return
        _drop(_teams, self._team)
        if self._anonymous:
            _drop(_anonymous_teams, self._team)
        if self._owner is not None:
            _drop(_owners, self._owner)
            if self._anonymous:
                _drop(_anonymous_owners, self._owner)
        self._team = self._owner = None


def claim(
    team_id: uuid.UUID, owner_id: uuid.UUID | None, *, per_team: int, per_owner: int, anonymous: bool = False
) -> Claim | str:
    """The connection counted, or why it is refused (the 429's message). ``anonymous``: admitted
    without a credential (a public port), held to half of each share."""
    owner = None if team_id == ids.PLATFORM_TEAM_ID else owner_id
    if _teams[team_id] >= per_team:
        return f"at most {per_team} proxied connections per team at once (all its sandboxes together)"
    if owner is not None and _owners[owner] >= per_owner:
        return (
            f"at most {per_owner} proxied connections at once to the sandboxes of all the teams "
            "this team's owner owns (max per owner)"
        )
    if anonymous and (refusal := _anonymous_refusal(team_id, owner, per_team, per_owner)) is not None:
        return refusal
    _teams[team_id] += 1
    if anonymous:
        _anonymous_teams[team_id] += 1
    if owner is not None:
        _owners[owner] += 1
        if anonymous:
            _anonymous_owners[owner] += 1
    return Claim(team_id, owner, anonymous)


def _anonymous_refusal(team: uuid.UUID, owner: uuid.UUID | None, per_team: int, per_owner: int) -> str | None:
    if _anonymous_teams[team] >= max(1, per_team // 2):
        return (
            f"at most {max(1, per_team // 2)} proxied connections per team at once without "
            "credentials (public ports; half the team's share)"
        )
    if owner is not None and _anonymous_owners[owner] >= max(1, per_owner // 2):
        return (
            f"at most {max(1, per_owner // 2)} proxied connections at once without credentials "
            "to the sandboxes of all the teams this team's owner owns"
        )
    return None


def _drop(counts: Counter[uuid.UUID], key: uuid.UUID) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
