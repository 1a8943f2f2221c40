"""What a team's snapshots hold of the template store, deleted ones included (session 14).

The snapshot size quota (``quota_snapshot_mb``) counts a team's live snapshots. A layer leaves
the store only when the collector finds it unreferenced and older than its grace period
(services/layer_gc.py: an hour, a pass every ten minutes), so a tenant that snapshotted and
deleted (or overwrote) in a loop, changing a byte each time, kept a new layer in the store every
round while its quota showed the room free: hundreds of GB an hour, on the disk every team's
templates share. Snapshots refused after their export (several racing for the quota's last
room) left theirs likewise.

So every layer a team's snapshot writes is counted for the team until the collector has removed
it from the ``layers`` index, live or not; an export in flight holds the room it may fill
(``hold``), and its layer replaces the hold when stored (``settle``). A snapshot's export may
fill at most what keeps the team's count within ``STORE_FACTOR`` times its snapshot quota: past
it, 429 ``quota_exceeded``. The factor leaves a team room to replace all its snapshots once
while the collector catches up.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import layers, snapshot_store_layers, teams
from warren.errors import TooManyRequests
from warren.layers import LayerMeta

STORE_FACTOR = 2
MiB = 1024 * 1024
_t = snapshot_store_layers


def _counted(team_uuid: uuid.UUID, hold_ttl_s: float) -> sa.ColumnElement[bool]:
    """The team's rows that still count: holds younger than an export can run (a CP that died
    mid-export leaves one behind), layers still in the index (the store)."""
    in_store = sa.exists().where(layers.c.digest == _t.c.digest)
    young_hold = sa.and_(_t.c.digest.is_(None), _t.c.written_at > clock.now() - timedelta(seconds=hold_ttl_s))
    return sa.and_(_t.c.team_id == team_uuid, sa.or_(young_hold, sa.and_(_t.c.digest.is_not(None), in_store)))


async def held_bytes(conn: AsyncConnection, team_uuid: uuid.UUID, hold_ttl_s: float) -> int:
    q = sa.select(sa.func.coalesce(sa.func.sum(_t.c.size_bytes), 0)).where(_counted(team_uuid, hold_ttl_s))
    return int((await conn.execute(q)).scalar_one())


async def hold(
    engine: AsyncEngine, team_uuid: uuid.UUID, quota_mb: int, room: int, hold_ttl_s: float
) -> tuple[uuid.UUID, int]:
    """Hold up to ``room`` bytes of the store for an export of the team's; (the hold's id, the
    bytes held). Rows that no longer count go first. Under the team row's lock, so holds of one
    team are counted one after another (``snapshots._insert`` takes the same lock)."""
    bound = STORE_FACTOR * quota_mb * MiB
    async with transaction(engine) as conn:
        await conn.execute(
            sa.select(teams.c.id).where(teams.c.id == team_uuid).with_for_update(key_share=True)
        )
        await conn.execute(sa.delete(_t).where(_t.c.team_id == team_uuid, ~_counted(team_uuid, hold_ttl_s)))
        used = await held_bytes(conn, team_uuid, hold_ttl_s)
        if used >= bound:
            raise store_full(quota_mb, used)
        granted = max(min(room, bound - used), 0)  # 0: the quota's own refusal follows
        hold_id = ids.new_uuid()
        await conn.execute(
            _t.insert().values(
                id=hold_id, team_id=team_uuid, digest=None, size_bytes=granted, written_at=clock.now()
            )
        )
    return hold_id, granted


def store_full(quota_mb: int, used: int | None = None) -> TooManyRequests:
    """429 ``quota_exceeded``: the team's snapshot layers in the store are at the bound."""
    bound = STORE_FACTOR * quota_mb * MiB
    held = "are at" if used is None else f"hold {used // MiB} MiB of"
    return TooManyRequests(
        f"snapshot storage: the team's snapshot layers in the template store, deleted ones included "
        f"until the layer collector removes them (about an hour), {held} the {bound // MiB} MiB "
        f"allowed ({STORE_FACTOR} times the {quota_mb} MiB quota); try again later",
        code="quota_exceeded",
        quota="snapshot_store_mb",
        limit=bound // MiB,
        in_use=(used if used is not None else bound) // MiB,
    )


async def settle(engine: AsyncEngine, hold_id: uuid.UUID, team_uuid: uuid.UUID, meta: LayerMeta) -> None:
    """The export's layer is in the store: it counts in place of the hold (once per digest)."""
    async with transaction(engine) as conn:
        await conn.execute(sa.delete(_t).where(_t.c.id == hold_id))
        stmt = pg_insert(_t).values(
            id=ids.new_uuid(),
            team_id=team_uuid,
            digest=meta.digest,
            size_bytes=meta.size,
            written_at=clock.now(),
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                constraint="uq_snapshot_store_layers_team_id", set_={"written_at": clock.now()}
            )
        )


async def release(engine: AsyncEngine, hold_id: uuid.UUID) -> None:
    """The export stored nothing: its hold goes."""
    async with autocommit(engine) as conn:
        await conn.execute(sa.delete(_t).where(_t.c.id == hold_id))
