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
"""

from __future__ import annotations

import uuid
from collections import Counter

from warren import ids

# The event loop is single-threaded: no lock needed.
_teams: Counter[uuid.UUID] = Counter()
_owners: Counter[uuid.UUID] = Counter()


def open_for_team(team_id: uuid.UUID) -> int:
    return _teams[team_id]


def open_for_owner(owner_id: uuid.UUID) -> int:
    return _owners[owner_id]


class Claim:
    """One proxied connection's place in its team's and owner's counts, until :meth:`release`."""

    __slots__ = ("_owner", "_team")

    def __init__(self, team: uuid.UUID, owner: uuid.UUID | None) -> None:
        self._team: uuid.UUID | None = team
        self._owner = owner

    def release(self) -> None:
        if self._team is None:
            return
        _drop(_teams, self._team)
        if self._owner is not None:
            _drop(_owners, self._owner)
        self._team = self._owner = None


def claim(team_id: uuid.UUID, owner_id: uuid.UUID | None, *, per_team: int, per_owner: int) -> Claim | str:
    """The connection counted, or why it is refused (the 429's message)."""
    owner = None if team_id == ids.PLATFORM_TEAM_ID else owner_id
    if _teams[team_id] >= per_team:
        return f"at most {per_team} proxied connections per team at once (all its sandboxes together)"
    if owner is not None and _owners[owner] >= per_owner:
        return (
            f"at most {per_owner} proxied connections at once to the sandboxes of all the teams "
            "this team's owner owns (max per owner)"
        )
    _teams[team_id] += 1
    if owner is not None:
        _owners[owner] += 1
    return Claim(team_id, owner)


def _drop(counts: Counter[uuid.UUID], key: uuid.UUID) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
