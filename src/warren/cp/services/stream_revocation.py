"""Open streams end when the credentials they were opened with stop being valid (session 16).

A stream (exec, terminal, watch, file transfer, build log, E2B envd stream: ``stream_slots``)
was authenticated once, at its start. Without a re-check, a member removed from the team, an
API key revoked or an envd access token rotated (``envd_rotation``) kept every stream it had
open: a terminal, a running process's output, a download. So each replica re-reads the
credentials of its open streams, in one statement, every :data:`RECHECK_S` seconds (only when
streams are open), and at once after a change made in this process (:func:`kick`); a stream
whose credentials fail ends with 401 ``access_revoked`` (``stream_slots.Revoked``).

What is re-checked, per kind of credential (what ``authn`` and ``envd_access`` check at the
start, less what cannot change: signatures, hashes):

- a user's token or dashboard session: their membership in the team, and the team live;
- an API key: the key still exists (revoking deletes it), and the team live;
- a sandbox's envd access token or a URL signed with it (E2B's, and since session 16 the API's
  signed file URLs, ``file_urls``): the sandbox's token epoch unchanged, and the team live;
- a preview proxy connection admitted by a traffic token, a signed preview URL or its cookie
  (session 17, ``cp/proxy/app.py``): the sandbox's traffic token hash unchanged (the signing key
  derives from it; ``revoke_team_tokens`` and a rotation change it), and the team live. These
  connections are not stream slots: the proxy registers them with :func:`watching`.
- a preview proxy connection to a public port, without a credential (session 17): the port
  still public (in ``public_ports``, or ``all_ports_public``), the sandbox running (paused in
  memory it is frozen with its connections open) and the team live.

Since session 18 a preview connection (either kind) also rests on its sandbox running: a
paused sandbox serves nothing, and its frozen connections held the proxy's slots until the
resume (the pause kicks the re-check; the reason the re-check reads, ``paused``, picks the
close). And one admitted by a signed URL or its cookie ends at the URL's expiry (``expires``,
read by the re-check on :mod:`warren.clock`: within ``RECHECK_S`` of it). Not a timer per
connection: a loop timer set and cancelled, with the clock read, cost ~27k instructions, twice
what registering does, on every request a browser makes with the cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import driver
from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.errors import InvalidRequest

log = logging.getLogger("warren.streams")

RECHECK_S = 5.0  # how long another replica's change may leave a stream open here (WARREN_STREAM_RECHECK_S)

# The grants that no longer hold, by index, with their sandbox's status for a preview grant
# (the reason when it is not running; read only for a grant that failed). One statement for
# every open stream of the process.
# OFFSET 0 keeps each EXISTS a subplan of index lookups: without it PostgreSQL's custom plans
# (the first five runs per connection) turned them into semi-joins hashing whole tables from
# ~100 grants on (~1 750 buffers, 40-230 ms at 20 000 rows, growing with the tables).
_FAILED = """
    SELECT g.i, CASE WHEN g.kind IN ('preview', 'public') THEN
        (SELECT s.status FROM sandboxes s WHERE s.id = g.a) END AS status
    FROM unnest($1::int[], $2::text[], $3::uuid[], $4::uuid[], $5::bigint[], $6::text[])
        AS g(i, kind, a, b, epoch, h)
    WHERE NOT CASE g.kind
        WHEN 'sandbox' THEN EXISTS (
            SELECT 1 FROM sandboxes s JOIN teams t ON t.id = s.team_id
            WHERE s.id = g.a AND s.envd_token_epoch = g.epoch AND t.deleted_at IS NULL OFFSET 0)
        WHEN 'preview' THEN EXISTS (
            SELECT 1 FROM sandboxes s JOIN teams t ON t.id = s.team_id
            WHERE s.id = g.a AND s.traffic_token_hash = g.h AND s.status = 'running'
              AND t.deleted_at IS NULL OFFSET 0)
        WHEN 'public' THEN EXISTS (
            SELECT 1 FROM sandboxes s JOIN teams t ON t.id = s.team_id
            WHERE s.id = g.a AND s.status = 'running'
              AND (s.all_ports_public OR g.epoch::int = ANY(s.public_ports))
              AND t.deleted_at IS NULL OFFSET 0)
        WHEN 'key' THEN EXISTS (
            SELECT 1 FROM team_api_keys k JOIN teams t ON t.id = k.team_id
            WHERE k.id = g.a AND t.deleted_at IS NULL OFFSET 0)
        ELSE EXISTS (
            SELECT 1 FROM users_teams ut JOIN teams t ON t.id = ut.team_id
            WHERE ut.user_id = g.a AND ut.team_id = g.b AND t.deleted_at IS NULL OFFSET 0)
    END
"""


@dataclass(frozen=True)
class Grant:
    """What a credential's validity rests on: ``kind`` ``sandbox`` (a = sandbox, epoch),
    ``key`` (a = API key), ``member`` (a = user, b = team), ``preview`` (a = sandbox, h = its
    traffic token's hash) or ``public`` (a = sandbox, epoch = the public port)."""

    kind: str
    a: uuid.UUID
    b: uuid.UUID | None = None
    epoch: int = 0
    h: str = ""


def grant_of(ctx: AuthContext) -> Grant | None:
    """The grant to re-check for ``ctx``; None: nothing that can be revoked (no team)."""
    if ctx.team_id is None:
        return None
    # A sandbox's token, or a URL signed at its token epoch (envd's and the API's signed URLs).
    if ctx.only_sandbox is not None and (ctx.kind == "sandbox_token" or ctx.token_epoch is not None):
        try:
            sb = ids.parse_id(ids.Kind.SANDBOX, ctx.only_sandbox, what="sandbox ID")
        except InvalidRequest:
            return None
        return Grant("sandbox", sb, epoch=ctx.token_epoch or 0)
    if ctx.kind == "api_key" and ctx.api_key_id is not None:
        return Grant("key", ctx.api_key_id)
    if ctx.user_id is not None:
        return Grant("member", ctx.user_id, ctx.team_id)
    return None


async def failed(engine: AsyncEngine, grants: list[Grant]) -> set[Grant]:
    """The ``grants`` that no longer hold (one statement)."""
    return set(await failed_why(engine, grants))


async def failed_why(engine: AsyncEngine, grants: list[Grant]) -> dict[Grant, str]:
    """The ``grants`` that no longer hold, each with why: a preview grant's sandbox status
    when it is not running (``paused``, ``stopped``, ``missing``, ...), else ``revoked``."""
    if not grants:
        return {}
    async with driver(engine) as conn:
        rows = await conn.fetch(
            _FAILED,
            list(range(len(grants))),
            [g.kind for g in grants],
            [g.a for g in grants],
            [g.b for g in grants],
            [g.epoch for g in grants],
            [g.h for g in grants],
        )
    return {grants[r[0]]: r[1] if r[1] not in (None, "running") else "revoked" for r in rows}


async def still_valid(engine: AsyncEngine, ctx: AuthContext) -> bool:
    """Whether ``ctx``'s credentials still hold (for a long call that hands out a secret at its
    end, e.g. E2B's create and its envd access token)."""
    grant = grant_of(ctx)
    return grant is None or not await failed(engine, [grant])


class Watched:
    """A connection that is not a stream slot (a preview proxy connection), registered while
    its ``with`` block runs (in memory: no statement): :meth:`revoke` calls ``on_revoke`` once,
    in the event loop, if it is still registered, and says why in :attr:`why` (``revoked``,
    ``expired``, or the status of a sandbox no longer running: ``paused``, ...). ``expires``
    (unix seconds on :mod:`warren.clock`, a signed URL's): the re-check revokes it from then
    on. A class, not a generator context manager: the proxy enters one per request."""

    __slots__ = ("_on_revoke", "expires", "grant", "revoked", "why")

    def __init__(self, grant: Grant, on_revoke: Callable[[], object], expires: float | None = None) -> None:
        self.grant, self.revoked, self._on_revoke = grant, False, on_revoke
        self.expires, self.why = expires, ""

    def __enter__(self) -> Watched:
        _watched[self] = None
        return self

    def __exit__(self, *exc: object) -> None:
        del _watched[self]

    def revoke(self, why: str = "revoked") -> None:
        if self.revoked or self not in _watched:
            return  # ended while the re-check read the database
        self.revoked, self.why = True, why
        self._on_revoke()


# Every registered connection of this process.
_watched: dict[Watched, None] = {}


def watching(grant: Grant, on_revoke: Callable[[], object], *, expires: float | None = None) -> Watched:
    """``with watching(grant, on_revoke):`` registers a connection for the re-check while the
    block runs; ``on_revoke`` is called when ``grant`` stops holding, or from ``expires`` on."""
    return Watched(grant, on_revoke, expires)


async def recheck(engine: AsyncEngine) -> int:
    """One pass: revoke every open stream and registered connection of this process whose
    credentials fail; how many."""
    by_grant: dict[Grant, list[stream_slots.Slot | Watched]] = {}
    for slot in stream_slots.live_slots():
        grant = grant_of(slot.ctx) if slot.ctx is not None and not slot.revoked else None
        if grant is not None:
            by_grant.setdefault(grant, []).append(slot)
    now, ended = clock.time_s(), 0
    for w in list(_watched):
        if w.revoked:
            continue
        if w.expires is not None and w.expires <= now:  # a signed URL's, or its cookie's
            ended += _end(w, "expired")
            continue
        by_grant.setdefault(w.grant, []).append(w)
    failing = await failed_why(engine, list(by_grant)) if by_grant else {}
    for grant, why in failing.items():
        for held in by_grant[grant]:
            ended += _end(held, why)
    if ended:
        log.info("ended %d open streams whose credentials are no longer valid", ended)
    return ended


def _end(held: stream_slots.Slot | Watched, why: str) -> int:
    try:
        if isinstance(held, Watched):
            held.revoke(why)
        else:
            held.revoke()
    except Exception:  # one connection's hook must not spare the others
        log.exception("ending a revoked connection failed")
    return 1


_wake: asyncio.Event | None = None


def kick() -> None:
    """Re-check at once (after a change that may have revoked credentials, once committed)."""
    if _wake is not None:
        _wake.set()


class RevocationWorker:
    """The re-check loop of this process (started by ``cp/app.py``'s lifespan)."""

    def __init__(self, engine: AsyncEngine, interval_s: float = RECHECK_S) -> None:
        self.engine, self.interval_s = engine, interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def start(self) -> None:
        global _wake
        _wake = self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._wake), name="stream-revocation")

    async def _loop(self, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval_s)
            wake.clear()
            try:
                await recheck(self.engine)
            except Exception:
                log.exception("stream credential re-check failed")

    async def stop(self) -> None:
        global _wake
        if _wake is self._wake:
            _wake = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
