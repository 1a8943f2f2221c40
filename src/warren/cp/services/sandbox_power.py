"""Pause, resume and ping of one sandbox (docs/spec.md §2.5), and the conditional status move a
pause and a snapshot pre-mark with. The lookup and the view are ``services/sandboxes.py``'s."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import sandbox_metric_points, sandboxes
from warren.cp.hosts.agent_client import answered_ip
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import audit, snapshot_hold, stream_revocation
from warren.cp.services.context import AuthContext
from warren.cp.services.sandboxes import SandboxView, find, sandbox_model, touch
from warren.errors import InvalidState
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.sandboxes")

# The metric points a pause keeps, per range asked: what an agent holds of it (agent/metrics.py:
# 120 a range), within the range's span of now (plus a minute of clock skew). A BYOC host's
# agent (its tenant's) answered thousands of made-up timestamps, each pause a new row apiece.
_KEPT_RANGES = {"2h": 7200, "10m": 600}
_POINTS_PER_RANGE = 120
_SKEW_S = 60


async def move_status(
    engine: AsyncEngine, sb_uuid: uuid.UUID, old: str, new: str, *, paused_state: str | None = None
) -> bool:
    """``old`` → ``new`` if the sandbox still is ``old`` (a pause's or a snapshot's pre-mark, and
    its undo); whether it was. ``paused_state``: an E2B snapshot's pre-mark says it is paused
    for its snapshot (``services/snapshot_hold.py``)."""
    async with autocommit(engine) as conn:
        moved = await conn.execute(
            sa.update(sandboxes)
            .where(sandboxes.c.id == sb_uuid, sandboxes.c.status == old)
            # A pre-mark leaves how it is paused unknown until its agent answers; an undo clears it.
            .values(status=new, last_updated=clock.now(), paused_state=paused_state)
            .returning(sandboxes.c.id)
        )
        done = moved.first() is not None
    if done and new == "paused":  # a snapshot's pre-mark: its preview connections end, as a pause's
        stream_revocation.kick()
    return done


async def set_paused_state(engine: AsyncEngine, sb_uuid: uuid.UUID, state: str | None) -> None:
    """How a paused sandbox is paused, as its agent said: "disk" (checkpointed), "memory" or None
    (frozen). One paused for its own snapshot keeps that mark until its resume (snapshot_hold)."""
    held = sandboxes.c.paused_state.is_not_distinct_from(snapshot_hold.TRANSIENT)
    async with autocommit(engine) as conn:
        await conn.execute(
            sa.update(sandboxes).where(sandboxes.c.id == sb_uuid, ~held).values(paused_state=state)
        )


async def _status_conflict(conn: AsyncConnection, sb_uuid: uuid.UUID, want: str) -> InvalidState:
    status = (await conn.execute(sa.select(sandboxes.c.status).where(sandboxes.c.id == sb_uuid))).scalar()
    return InvalidState(f"sandbox is not {want} (status: {status})")


async def pause_sandbox(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> SandboxView:
    found = await find(engine, ctx, sandbox_id)
    found.require_host()
    # Pre-mark paused (docs/spec.md §2.5) so the monitor does not take the frozen sandbox for gone.
    if not await move_status(engine, found.sb_uuid, "running", "paused"):
        async with autocommit(engine) as conn:
            raise await _status_conflict(conn, found.sb_uuid, "running")
    sid = found.sandbox.id
    try:
        resp = await found.host_client(pool).stub.PauseSandbox(
            pb.PauseSandboxRequest(sandbox_id=sid), timeout=120
        )
    except Exception:
        await move_status(engine, found.sb_uuid, "paused", "running")
        raise
    await _save_metric_points(engine, found.host_client(pool), found.sb_uuid, sid)
    async with transaction(engine) as conn:
        # How the agent paused it: frozen in place, or (gVisor) checkpointed to disk.
        state = "disk" if resp.paused_state == "disk" else "memory"
        latest = (
            sa.update(sandboxes)
            .where(sandboxes.c.id == found.sb_uuid)
            .values(paused_state=state)
            .returning(*sandboxes.c)
        )
        new = (await conn.execute(latest)).mappings().one()
        await audit.record(
            conn, ctx, team_id=found.row["team_id"], action="pause", resource_type="sandbox", resource_id=sid
        )
    stream_revocation.kick()  # committed: its preview connections end (a paused sandbox serves nothing)
    return sandbox_model(new)


async def _save_metric_points(engine: AsyncEngine, client: HostClient, sb_uuid: uuid.UUID, sid: str) -> None:
    """Best effort (docs/spec.md §2.5 pause, §9.4): keep the samples of a paused sandbox in the database,
    so its metrics stay readable if the agent loses them. Failures are logged, never raised."""
    try:
        points: dict[int, Any] = {}
        now = int(clock.now().timestamp())
        for tier, span in _KEPT_RANGES.items():  # the finer tier wins where both have a timestamp
            resp = await client.stub.GetSandboxMetrics(
                pb.GetSandboxMetricsRequest(sandbox_id=sid, range=tier), timeout=10
            )
            if len(resp.points) > _POINTS_PER_RANGE:
                log.warning("pause: %s answered %d metric points, not kept", client.host_id, len(resp.points))
                continue
            oldest, newest = now - span - _SKEW_S, now + _SKEW_S
            points.update({p.timestamp_unix: p for p in resp.points if oldest <= p.timestamp_unix <= newest})
        if not points:
            return
        rows = [
            {"sandbox_id": sb_uuid, "ts": datetime.fromtimestamp(ts, UTC), "cpu_pct": round(p.cpu_pct),
             "mem_bytes": p.mem_bytes, "disk_bytes": p.disk_bytes}
            for ts, p in sorted(points.items())
        ]  # fmt: skip
        async with autocommit(engine) as conn:
            await conn.execute(pg_insert(sandbox_metric_points).values(rows).on_conflict_do_nothing())
    except Exception as e:
        log.info("pause: could not save metric points of %s: %s", sid, e)


async def resume_sandbox(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> SandboxView:
    found = await find(engine, ctx, sandbox_id, states=("paused",))
    found.require_host()
    sid = found.sandbox.id
    client = found.host_client(pool)
    resp = await client.stub.ResumeSandbox(
        pb.ResumeSandboxRequest(sandbox_id=sid, timeout_sec=found.sandbox.timeout_sec), timeout=120
    )
    host_ip = answered_ip(resp.host_ip, client.host_id) or found.row["host_ip"]
    now = clock.now()
    async with transaction(engine) as conn:
        new = (
            await conn.execute(
                sa.update(sandboxes)
                .where(sandboxes.c.id == found.sb_uuid, sandboxes.c.status == "paused")
                .values(
                    status="running", host_ip=host_ip, started_at=now,
                    last_active_at=now, last_updated=now, paused_state=None,
                )
                .returning(*sandboxes.c)
            )
        ).mappings().first()  # fmt: skip
        if new is None:
            raise await _status_conflict(conn, found.sb_uuid, "paused")
        await audit.record(
            conn, ctx, team_id=found.row["team_id"], action="resume", resource_type="sandbox", resource_id=sid
        )
    return sandbox_model(new)


async def ping_sandbox(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str) -> None:
    found = await find(engine, ctx, sandbox_id, states=("running",))
    found.require_host()
    await found.host_client(pool).stub.PingSandbox(
        pb.PingSandboxRequest(sandbox_id=found.sandbox.id), timeout=30
    )
    await touch(engine, found.sb_uuid)
