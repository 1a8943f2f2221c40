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
            ctx = await state.gate.admit(creds, require_user=False)
            slot.claim(ctx, settings.max_streams_per_team)
            ...
        except Exception as e:
            await ws.deny(websocket, e)
            return
        ...  # accept and run the session; leaving the block gives the slot back

Since session 16 a stream also ends when the credentials it was opened with stop being valid
(a member removed or gone, an API key revoked, an envd token rotated, the team deleted):
``services/stream_revocation.py`` re-reads the open slots' credentials and calls
:meth:`Slot.revoke`, which cancels whatever the stream awaits inside :meth:`Slot.guard` (a
:class:`Held` stream's next item is awaited there) and makes it raise :class:`Revoked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from warren import ids
from warren.config import Settings
from warren.cp.services.context import AuthContext
from warren.errors import TooManyRequests, Unauthorized

T = TypeVar("T")

# Open streams per team and per owning account in this process. The event loop is
# single-threaded: no lock needed.
_open: Counter[uuid.UUID | None] = Counter()
_owned: Counter[uuid.UUID] = Counter()
# Every slot held in this process, for the credential re-check (stream_revocation).
_live: dict[Slot, None] = {}
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


class Revoked(Unauthorized):
    """The credentials a stream was opened with are no longer valid: it ends (401)."""

    def __init__(self) -> None:
        super().__init__(
            "the credentials this stream was opened with are no longer valid (member removed, "
            "API key revoked, access token rotated or team deleted)",
            code="access_revoked",
        )


def live_slots() -> list[Slot]:
    return list(_live)


class Slot:
    """One stream's place in its team's count: taken by :meth:`claim`, given back on leaving
    the ``with`` block (whether or not it was taken)."""

    def __init__(self) -> None:
        self._team: uuid.UUID | None = None
        self._owner: uuid.UUID | None = None
        self._held = False
        self.ctx: AuthContext | None = None  # the credentials, re-checked while held
        self.revoked = False
        self._task: asyncio.Task[object] | None = None  # awaiting inside guard()
        self._cancelled: asyncio.Task[object] | None = None  # the task revoke() cancelled

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
        self.ctx = ctx
        _live[self] = None

    def revoke(self) -> None:
        """End the stream: what it awaits in :meth:`guard` now, or its next :meth:`guard`,
        raises :class:`Revoked`."""
        self.revoked = True
        if self._task is not None and self._cancelled is None:
            self._cancelled = self._task
            self._task.cancel()

    async def guard(self, work: Awaitable[T]) -> T:
        """``await work``, cut short by :meth:`revoke` (as :class:`Revoked`)."""
        if self.revoked:
            close = getattr(work, "close", None)
            if close is not None:
                close()  # a coroutine never awaited
            raise Revoked()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        try:
            result = await work
        except asyncio.CancelledError:
            # Our cancel (and no one else's as well) becomes the stream's end; any other is kept.
            if self._cancelled is task and task.uncancel() == 0:
                raise Revoked() from None
            raise
        finally:
            self._task = None
        if self._cancelled is task:  # the work swallowed our cancel: still the end
            task.uncancel()
            raise Revoked()
        return result

    async def guard_notify(
        self, work: Awaitable[None], notify: Callable[[Revoked], Awaitable[object]]
    ) -> None:
        """:meth:`guard` for a WebSocket session: a revocation is told to its client
        (``notify``, e.g. an error frame; its failure ignored) and ends the session quietly."""
        try:
            await self.guard(work)
        except Revoked as e:
            with contextlib.suppress(Exception):  # the client may be gone already
                await notify(e)

    def release(self) -> None:
        _live.pop(self, None)
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
            return await self._slot.guard(anext(self._items))
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
