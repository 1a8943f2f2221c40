"""Snapshots as E2B's API has them (docs/e2b.md §2), over ``services/snapshots.py``.

- Create leaves the source as it was: Warren's snapshot pauses a running sandbox (and leaves it
  paused), so one that was running is resumed afterwards, as E2B's snapshots keep it running.
  Meanwhile it is marked paused for its snapshot: commands sent to it wait for the resume
  instead of being refused (``services/snapshot_hold.py``).
  The snapshot's id is its name, which ``templateID`` at create resolves.
- The list is the team's snapshots, newest first, optionally only those taken of one sandbox
  (its source is read from the snapshot's create audit record, the one place Warren keeps it),
  paginated with an opaque cursor like the sandbox list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.config import Settings
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import audit_logs, templates
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import sandbox_power, snapshot_hold, snapshots
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.sandbox_list import MAX_LIMIT, decode_cursor, encode_cursor
from warren.cp.services.sandboxes import find
from warren.cp.services.strict import check_text
from warren.cp.services.template_spec import TEMPLATE_NAME_RE
from warren.cp.store import LayerStore
from warren.errors import InvalidRequest, InvalidState, NotFound


async def create(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    name: str | None,
    *,
    settings: Settings,
    store: LayerStore,
) -> str:
    """Snapshot ``sandbox_id`` as ``name`` (a generated one when empty); returns its id (the
    name). A sandbox that was running runs again afterwards."""
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("name must be a string")
    try:
        found = await find(engine, ctx, sandbox_id, states=("running", "paused"))
        while found.sandbox.status == "paused" and await snapshot_hold.wait_out(engine, ctx, found.sb_uuid):
            found = await find(engine, ctx, sandbox_id, states=("running", "paused"))  # another's ended
    except InvalidState as e:
        raise NotFound("sandbox not found") from e
    was = found.sandbox.status
    body = json.dumps({"sandbox_id": sandbox_id, "name": name or ""}).encode()
    paused_as: str | None = None  # how the snapshot left it paused: "disk" when checkpointed
    async with snapshot_hold.kept_fresh(engine, found.sb_uuid):
        try:
            made = await snapshots.create_snapshot(
                engine, pool, ctx, body, settings=settings, store=store, transient=was == "running"
            )
            paused_as = "disk" if made.kind == "memory" else None
        finally:
            if was == "running":
                try:
                    await _resume_if_paused(engine, pool, ctx, sandbox_id)
                finally:
                    # Its resume failed: paused as its agent paused it, no longer for its snapshot.
                    await asyncio.shield(snapshot_hold.settle(engine, found.sb_uuid, paused_as))
    return made.name


async def _resume_if_paused(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> None:
    # Already running again (a failed snapshot resumes it), or gone meanwhile: nothing to do.
    with contextlib.suppress(InvalidState, NotFound):
        await sandbox_power.resume_sandbox(engine, pool, ctx, sandbox_id)


@dataclass(frozen=True)
class SnapshotPage:
    names: list[str]
    next_token: str | None


async def list_page(
    engine: AsyncEngine,
    ctx: AuthContext,
    *,
    sandbox_id: str = "",
    name: str = "",
    limit: int = MAX_LIMIT,
    cursor: str = "",
) -> SnapshotPage:
    """One page of the team's snapshots, newest first (see module doc)."""
    team_uuid = require_team(ctx)
    t = templates
    stmt = sa.select(t.c.id, t.c.name, t.c.created_at).where(t.c.team_id == team_uuid, t.c.type == "snapshot")
    if name:
        check_text(name, "name")  # NUL: PostgreSQL's error, a 500 (session 12)
        # `name` or E2B's tag-qualified `name:tag` (a Warren snapshot is tagged `v1`).
        base, _, tag = name.partition(":")
        stmt = stmt.where(t.c.name == base)
        if tag:
            stmt = stmt.where(t.c.tags.any(tag))
    if sandbox_id:
        ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandboxID")
        a = audit_logs
        taken_of = (
            sa.select(a.c.id)
            .where(
                a.c.team_id == team_uuid, a.c.resource_type == "snapshot", a.c.action == "create",
                a.c.resource_id == t.c.name, a.c.created_at >= t.c.created_at,
                a.c.metadata["sandbox_id"].astext == sandbox_id,
            )
            .exists()
        )  # fmt: skip
        stmt = stmt.where(taken_of)
    if cursor:
        at, after = decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(t.c.created_at, t.c.id) < sa.tuple_(sa.literal(at), sa.literal(after)))
    stmt = stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with autocommit(engine) as conn:
        rows = (await conn.execute(stmt)).all()
    token = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return SnapshotPage([r.name for r in rows[:limit]], token)


async def delete(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, snapshot_id: str) -> None:
    """Delete the team's snapshot ``snapshot_id`` (its name); anything else, a base template or
    a platform one included, is a 404 here (E2B's ``delete_snapshot`` then answers False)."""
    if not TEMPLATE_NAME_RE.match(snapshot_id):
        raise NotFound("snapshot not found")
    team_uuid = require_team(ctx)
    async with autocommit(engine) as conn:
        kind = (
            await conn.execute(
                sa.select(templates.c.type).where(
                    templates.c.team_id == team_uuid, templates.c.name == snapshot_id
                )
            )
        ).scalar()
    if kind != "snapshot":
        raise NotFound("snapshot not found")
    await snapshots.delete_snapshot(engine, pool, ctx, snapshot_id)
