"""How many streams one team holds open at once in this CP process: exec streams, terminals
(the API's and the dashboard's), directory watches, E2B's envd streams (``Start``,
``Connect``, ``StreamInput``, ``WatchDir``: ``cp/e2b/envd/app.py``, refused there as Connect's
``resource_exhausted``, HTTP 429), build-log event streams (``template_builds.stream_log``) and,
since session 12, file transfers (``services/files.py``: downloads, and uploads while each file
goes to the agent; the API's, signed URLs', E2B's ``/files``) together (``max_streams_per_team``),
and those of all the teams one account owns together (``max_streams_per_owner``, session 15: an
account owns up to ``max_teams_per_user`` teams, and six teams' 64 unread exec streams each held
the CP +1018 MiB).

Each open stream may hold a few WebSocket messages in the CP and the agent (one read ahead, one
being handed on, its queued stdin), so without a cap one tenant opening hundreds of streams could
hold hundreds of MiB. The count is per process (each replica has its own memory to protect) and
lives in memory: a stream is a live connection to this process, gone when it restarts.

The owner is the team's ``owner`` member (one per team, for its whole life: nobody becomes owner
and the owner cannot leave), read with the credentials (``AuthContext.owner_id``). The platform
team has none, so its streams (the operator's) are bounded per team only, as before.

A route claims a slot after authenticating and before accepting the WebSocket, so a refusal is
the plain HTTP answer 429 ``too_many_streams``::

    with stream_slots.Slot() as slot:
        try:
            ctx = await authenticate(...)
            slot.claim(ctx, settings.max_streams_per_team)
            ...
        except Exception as e:
            await ws.deny(websocket, e)
            return
        ...  # accept and run the session; leaving the block gives the slot back
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from warren import ids
from warren.config import Settings
from warren.cp.services.context import AuthContext
from warren.errors import TooManyRequests

# Open streams per team and per owning account in this process. The event loop is
# single-threaded: no lock needed.
_open: Counter[uuid.UUID | None] = Counter()
_owned: Counter[uuid.UUID] = Counter()
# The per-owner bound: the process's (its counts are), set from Settings by cp/state.py.
_per_owner = Settings.model_fields["max_streams_per_owner"].default


def set_owner_limit(limit: int) -> None:
    global _per_owner
    _per_owner = limit


def open_streams(team_id: uuid.UUID | None) -> int:
    return _open[team_id]


def owned_streams(owner_id: uuid.UUID) -> int:
    return _owned[owner_id]


def _owner(ctx: AuthContext) -> uuid.UUID | None:
    """Whose account count the stream joins: the team's owner; a context that did not read one
    (none claims a slot today) counts as its team, so it is never bounded less than per team."""
    if ctx.team_id is None or ctx.team_id == ids.PLATFORM_TEAM_ID:
        return None
    return ctx.owner_id or ctx.team_id


class Slot:
    """One stream's place in its team's count: taken by :meth:`claim`, given back on leaving
    the ``with`` block (whether or not it was taken)."""

    def __init__(self) -> None:
        self._team: uuid.UUID | None = None
        self._owner: uuid.UUID | None = None
        self._held = False

    def claim(self, ctx: AuthContext, limit: int) -> None:
        """Count this stream for ``ctx``'s team, or raise 429 ``too_many_streams`` when the team
        already holds ``limit`` open here. Waiting helps (a stream closing frees a slot), but no
        time can be promised, so no Retry-After."""
        if self._held:
            return
        team, owner = ctx.team_id, _owner(ctx)
        if _open[team] >= limit:
            raise TooManyRequests(
                f"this team already has {limit} streams open (exec streams, terminals, watches, file "
                "transfers and E2B process and watch streams together); close one first",
                code="too_many_streams",
                limit=limit,
            )
        if owner is not None and _owned[owner] >= _per_owner:
            raise TooManyRequests(
                f"the teams of this team's owner already have {_per_owner} streams open together "
                "(max_streams_per_owner: exec streams, terminals, watches, file transfers and E2B "
                "streams of every team the account owns); close one first",
                code="too_many_streams_per_owner",
                limit=_per_owner,
            )
        _open[team] += 1
        if owner is not None:
            _owned[owner] += 1
        self._team, self._owner, self._held = team, owner, True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        _open[self._team] -= 1
        if _open[self._team] <= 0:
            del _open[self._team]
        if self._owner is not None:
            _owned[self._owner] -= 1
            if _owned[self._owner] <= 0:
                del _owned[self._owner]

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


T = TypeVar("T")


class Held(Generic[T]):
    """A stream's items, holding its team's slot until they end, fail or are dropped (a
    response never started is dropped without iterating, hence ``__del__``)."""

    def __init__(self, items: AsyncIterator[T], slot: Slot) -> None:
        self._items = items
        self._slot = slot

    def __aiter__(self) -> Held[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await anext(self._items)
        except BaseException:
            self._slot.release()
            raise

    async def aclose(self) -> None:
        self._slot.release()
        close = getattr(self._items, "aclose", None)
        if close is not None:
            await close()

    def __del__(self) -> None:
        self._slot.release()
