"""Absolute sandbox lifetimes (E2B's ``timeout``, docs/e2b.md §2): their rules, ``set_timeout``
and ``connect``.

A sandbox with a lifetime has ``end_at`` (NULL: none, the Warren API's default, where the
inactivity ``timeout_sec`` applies instead) and ``on_end`` (``kill`` | ``pause``). At
``end_at`` the lifetime sweeper (``services/lifetime_sweeper.py``) kills it or pauses it; only
running sandboxes end (a paused one has no clock running), and missing ones to kill (their host
stopped beating; the sweeper's module doc).

- A create, ``set_timeout`` or connect asks for a lifetime of 0 < t <= ``e2b_max_lifetime_s``
  seconds from now (400 otherwise).
- ``set_timeout`` sets ``end_at = now + t``: shorter or longer, E2B's semantics.
- Connect to a running sandbox extends it to ``now + t`` and never shortens it (200); to a
  paused one, sets ``end_at = now + t`` *before* resuming it (so the sweeper cannot judge it by
  an old end between the two), then resumes it (201). One paused for its own snapshot (E2B's
  snapshot or fork, which resume it) is waited for first (``services/snapshot_hold.py``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.config import Settings
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import sandbox_power, snapshot_hold
from warren.cp.services.context import AuthContext
from warren.cp.services.sandboxes import Found, find
from warren.errors import Conflict, InvalidRequest, InvalidState, NotFound

log = logging.getLogger("warren.lifetimes")

ON_END = ("kill", "pause")
LIVE = ("running", "paused")


def check_lifetime(settings: Settings, seconds: object) -> int:
    """A requested lifetime in whole seconds, 1 to the platform's maximum (400 otherwise)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidRequest("timeout must be an integer number of seconds")
    if seconds <= 0:
        raise InvalidRequest("timeout must be positive")
    if seconds > settings.e2b_max_lifetime_s:
        raise InvalidRequest(f"timeout must be at most {settings.e2b_max_lifetime_s} seconds")
    return seconds


def extended(current: datetime | None, now: datetime, seconds: int) -> datetime | None:
    """A connect's new end of a running sandbox: ``now + seconds`` unless it already ends later.
    No lifetime (None) stays none: it is longer than any."""
    if current is None:
        return None
    return max(current, now + timedelta(seconds=seconds))


async def _set_end(
    engine: AsyncEngine, sb_uuid: uuid.UUID, end_at: datetime | None, states: tuple[str, ...]
) -> bool:
    async with autocommit(engine) as conn:
        moved = await conn.execute(
            sa.update(sandboxes)
            .where(sandboxes.c.id == sb_uuid, sandboxes.c.status.in_(states))
            .values(end_at=end_at, last_updated=clock.now())
            .returning(sandboxes.c.id)
        )
        return moved.first() is not None


async def live(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> Found:
    """The team's running or paused sandbox; any other (stopped, errored, pending) is a 404, as
    E2B has no such sandbox."""
    try:
        return await find(engine, ctx, sandbox_id, states=LIVE)
    except InvalidState as e:
        raise NotFound("sandbox not found") from e


async def set_timeout(
    engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, seconds: object, *, settings: Settings
) -> None:
    """``end_at = now + seconds`` (E2B's ``set_timeout``): the sandbox ends then, sooner or
    later than before."""
    t = check_lifetime(settings, seconds)
    found = await live(engine, ctx, sandbox_id)
    if not await _set_end(engine, found.sb_uuid, clock.now() + timedelta(seconds=t), LIVE):
        raise NotFound("sandbox not found")


@dataclass(frozen=True)
class Connected:
    row: dict[str, Any]  # the sandbox's row after the connect
    resumed: bool


async def connect(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    seconds: object,
    *,
    settings: Settings,
) -> Connected:
    """Resume the sandbox if it is paused (``resumed``), and give it at least ``seconds`` more
    to live (see module doc)."""
    t = check_lifetime(settings, seconds)
    found = await live(engine, ctx, sandbox_id)
    while found.sandbox.status == "paused" and await snapshot_hold.wait_out(engine, ctx, found.sb_uuid):
        found = await live(engine, ctx, sandbox_id)  # its snapshot's resume, not this connect's
    now = clock.now()
    resumed = False
    if found.sandbox.status == "paused":
        # A paused sandbox's clock restarts: a Warren-API one (no lifetime) keeps none.
        if found.row["end_at"] is not None:
            await _set_end(engine, found.sb_uuid, now + timedelta(seconds=t), ("paused",))
        try:
            await sandbox_power.resume_sandbox(engine, pool, ctx, sandbox_id)
            resumed = True
        except InvalidState:
            pass  # resumed meanwhile by someone else: extend it like a running one
    if not resumed:
        current = await find(engine, ctx, sandbox_id)
        if current.sandbox.status != "running":
            raise NotFound("sandbox not found")
        new_end = extended(current.row["end_at"], now, t)
        if new_end != current.row["end_at"]:
            await _set_end(engine, found.sb_uuid, new_end, ("running",))
    latest = await find(engine, ctx, sandbox_id)
    return Connected(dict(latest.row), resumed)


async def resume(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    seconds: object,
    *,
    settings: Settings,
) -> Connected:
    """E2B's older resume: a paused sandbox is resumed like a connect; a running one is a 409."""
    check_lifetime(settings, seconds)
    found = await live(engine, ctx, sandbox_id)
    if found.sandbox.status == "running":
        raise Conflict(f"sandbox {sandbox_id} is already running", code="already_running")
    return await connect(engine, pool, ctx, sandbox_id, seconds, settings=settings)
