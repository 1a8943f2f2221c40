"""What a team holds of the template store: the layers its snapshots, builds and imports wrote,
live or waiting for the layer collector (session 14).

The store is one disk every team's templates and snapshots share, and nothing bounded a team's
part of it. The snapshot size quota (``quota_snapshot_mb``) counted live snapshots, but a layer
leaves the store only when the collector finds it unreferenced *and* older than its grace
period (services/layer_gc.py: an hour, a pass every ten minutes), so a snapshot/delete (or
overwrite) loop, a byte changed each round, kept every round's layer while the quota showed the
room free; snapshots refused after their export (several racing for the quota's last room) left
theirs likewise. A build's step layers stay live in the team's build cache for
``WARREN_BUILD_CACHE_TTL_S`` (7 days) whatever happens to the template, and a template's size
was checked only when its build ended, after every layer was stored.

So every layer a team writes to the store is counted for the team (``team_store_layers``) until
the collector has removed it from the ``layers`` index: its snapshots' layers (an export in
flight holds the room it may fill, ``hold``, replaced by its layer when stored, ``settle``), its
build steps' and imports' layers (``note``). The team's count stays within its store quota
(``quota_store_mb``, session 15; ``WARREN_QUOTA_STORE_MB``, 40 GiB by default: twice the snapshot
storage default, room to replace everything once while the collector catches up): a snapshot's
export stops there, a build step or an import that would start past it fails, 429
``quota_exceeded`` (``quota: store_mb``). Until session 15 the bound was twice the snapshot
storage quota, so a team whose snapshot quota was 0 could build nothing. At the bound, the
team's build cache entries that no template version names are dropped first (their layers then
age out), so a team is never shut out for the cache's 7 days.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import build_cache, layers, team_store_layers, teams, templates
from warren.cp.services import limits
from warren.errors import TooManyRequests
from warren.layers import LayerMeta

MiB = 1024 * 1024
HOLD_TTL_S = 3600.0  # a hold older than this is a dead CP's (an export runs at most 300 s)
_t = team_store_layers


def _counted(team_uuid: uuid.UUID) -> sa.ColumnElement[bool]:
    """The team's rows that still count: holds younger than an export can run (a CP that died
    mid-export leaves one behind), layers still in the index (the store)."""
    in_store = sa.exists().where(layers.c.digest == _t.c.digest)
    young_hold = sa.and_(_t.c.digest.is_(None), _t.c.written_at > clock.now() - timedelta(seconds=HOLD_TTL_S))
    return sa.and_(_t.c.team_id == team_uuid, sa.or_(young_hold, sa.and_(_t.c.digest.is_not(None), in_store)))


async def held_bytes(conn: AsyncConnection, team_uuid: uuid.UUID) -> int:
    q = sa.select(sa.func.coalesce(sa.func.sum(_t.c.size_bytes), 0)).where(_counted(team_uuid))
    return int((await conn.execute(q)).scalar_one())


async def _quota(conn: AsyncConnection, lim: limits.PlatformLimits, team_uuid: uuid.UUID) -> int:
    team = (await conn.execute(sa.select(teams).where(teams.c.id == team_uuid))).mappings().one()
    return limits.team_quotas(lim, team).store_mb


async def quota_mb(conn: AsyncConnection, settings: Settings, team_uuid: uuid.UUID) -> int:
    """The team's store quota in force (MiB)."""
    return await _quota(conn, await limits.load(conn, settings), team_uuid)


def store_full(quota: int, used: int | None = None) -> TooManyRequests:
    """429 ``quota_exceeded``: the team's layers in the store are at its store quota."""
    held = "are at" if used is None else f"hold {used // MiB} MiB of"
    return TooManyRequests(
        f"template store: the team's layers (snapshots, builds, imports; deleted ones included "
        f"until the layer collector removes them, about an hour) {held} the {quota} MiB its "
        "store quota (store_mb) allows; delete some and try again later, or ask a platform "
        "admin to raise the quota",
        code="quota_exceeded",
        quota="store_mb",
        limit=quota,
        in_use=(used if used is not None else quota * MiB) // MiB,
    )


async def _locked_usage(conn: AsyncConnection, team_uuid: uuid.UUID) -> int:
    """The team's count, under its team row's lock (holds and checks of one team go one after
    another; ``snapshots._insert`` takes the same lock), rows that no longer count gone first."""
    await conn.execute(sa.select(teams.c.id).where(teams.c.id == team_uuid).with_for_update(key_share=True))
    await conn.execute(sa.delete(_t).where(_t.c.team_id == team_uuid, ~_counted(team_uuid)))
    return await held_bytes(conn, team_uuid)


async def _drop_unnamed_cache(conn: AsyncConnection, team_uuid: uuid.UUID) -> None:
    """The team's build cache entries whose layer no template version names: what gives way at
    the bound (a build in flight that hit one recorded its layer again, young for the GC)."""
    named = sa.exists().where(build_cache.c.layer == sa.any_(templates.c.layers))
    await conn.execute(sa.delete(build_cache).where(build_cache.c.team_id == team_uuid, ~named))


async def check(engine: AsyncEngine, settings: Settings, team_uuid: uuid.UUID, more: int = 0) -> None:
    """Refuse (429) what would take the team past the bound: ``more`` bytes about to be written
    (an import's), or any write at all once the count is at the bound (a build step's). The
    platform's own builds (``base``) are the operator's, bounded by no team's quota: the
    platform team has no team row to hold one."""
    if team_uuid == ids.PLATFORM_TEAM_ID:
        return
    async with transaction(engine) as conn:
        quota = await quota_mb(conn, settings, team_uuid)
        used = await _locked_usage(conn, team_uuid)
    if used + more > quota * MiB or (not more and used >= quota * MiB):
        await _refuse(engine, team_uuid, quota, used)


async def _refuse(engine: AsyncEngine, team_uuid: uuid.UUID, quota: int, used: int) -> None:
    async with autocommit(engine) as conn:
        await _drop_unnamed_cache(conn, team_uuid)
    raise store_full(quota, used)


async def hold(
    engine: AsyncEngine, lim: limits.PlatformLimits, team_uuid: uuid.UUID, room: int
) -> tuple[uuid.UUID, int, int]:
    """Hold up to ``room`` bytes of the store for a snapshot export of the team's; (the hold's
    id, the bytes held, 0 when the snapshot quota itself leaves no room: its own refusal follows;
    the team's store quota, MiB)."""
    hold_id = ids.new_uuid()
    async with transaction(engine) as conn:
        used = await _locked_usage(conn, team_uuid)
        quota = await _quota(conn, lim, team_uuid)
        bound = quota * MiB
        granted = max(min(room, bound - used), 0)
        if used < bound:
            row = {"id": hold_id, "team_id": team_uuid, "digest": None, "size_bytes": granted}
            await conn.execute(_t.insert().values(**row, written_at=clock.now()))
    if used >= bound:
        await _refuse(engine, team_uuid, quota, used)
    return hold_id, granted, quota


async def _note(conn: AsyncConnection, team_uuid: uuid.UUID, meta: LayerMeta) -> None:
    row = {"id": ids.new_uuid(), "team_id": team_uuid, "digest": meta.digest, "size_bytes": meta.size}
    stmt = pg_insert(_t).values(**row, written_at=clock.now())
    await conn.execute(
        stmt.on_conflict_do_update(
            constraint="uq_team_store_layers_team_id", set_={"written_at": clock.now()}
        )
    )


async def note(engine: AsyncEngine, team_uuid: uuid.UUID, meta: LayerMeta) -> None:
    """A layer the team's build or import put in the store counts for the team from now on (the
    platform's own are counted for no one, as ``check`` bounds them by none)."""
    if team_uuid == ids.PLATFORM_TEAM_ID:
        return
    async with autocommit(engine) as conn:
        await _note(conn, team_uuid, meta)


async def settle(engine: AsyncEngine, hold_id: uuid.UUID, team_uuid: uuid.UUID, meta: LayerMeta) -> None:
    """The export's layer is in the store: it counts in place of the hold (once per digest)."""
    async with transaction(engine) as conn:
        await conn.execute(sa.delete(_t).where(_t.c.id == hold_id))
        await _note(conn, team_uuid, meta)


async def release(engine: AsyncEngine, hold_id: uuid.UUID) -> None:
    """The export stored nothing: its hold goes."""
    async with autocommit(engine) as conn:
        await conn.execute(sa.delete(_t).where(_t.c.id == hold_id))
