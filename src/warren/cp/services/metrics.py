"""Sandbox metrics (docs/spec.md §9.4): CPU, memory and disk samples from the agent's ring tiers.

The agent keeps three tiers — 10m (raw samples), 2h (30 s averages), 24h (5 min averages). A
requested range reads the smallest tier that covers it and trims it to the range. A running
sandbox is read from its agent; a paused one from its agent when it still has the samples,
else from the points saved in the database at pause time. Other statuses are 404.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import sandbox_metric_points
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import Timestamp, sandbox_access
from warren.cp.services.context import AuthContext
from warren.errors import AgentError, InvalidRequest, InvalidState, NotFound, ServiceUnavailable
from warren.rpc import hostagent_pb2 as pb

# range → (agent tier, seconds kept)
RANGES: dict[str, tuple[str, int]] = {
    "5m": ("10m", 5 * 60),
    "10m": ("10m", 10 * 60),
    "1h": ("2h", 3600),
    "2h": ("2h", 2 * 3600),
    "6h": ("24h", 6 * 3600),
    "12h": ("24h", 12 * 3600),
    "24h": ("24h", 24 * 3600),
}


class MetricPoint(BaseModel):
    timestamp: Timestamp
    timestamp_unix: int
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int


class Metrics(BaseModel):
    sandbox_id: str
    range: str
    points: list[MetricPoint]


def _point(ts: int, cpu: float, mem: int, disk: int) -> MetricPoint:
    return MetricPoint(
        timestamp=datetime.fromtimestamp(ts, UTC),
        timestamp_unix=ts,
        cpu_pct=cpu,
        mem_bytes=mem,
        disk_bytes=disk,
    )


async def get_metrics(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, range_: str
) -> Metrics:
    if range_ not in RANGES:
        raise InvalidRequest(f"range must be one of {', '.join(RANGES)}")
    tier, seconds = RANGES[range_]
    try:
        tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id, states=("running", "paused"))
    except InvalidState as e:
        raise NotFound("metrics exist only for running or paused sandboxes") from e
    since = int(clock.time_s()) - seconds
    points: list[MetricPoint] = []
    try:
        resp = await tgt.client().stub.GetSandboxMetrics(
            pb.GetSandboxMetricsRequest(sandbox_id=tgt.sid, range=tier), timeout=15
        )
        points = [
            _point(p.timestamp_unix, p.cpu_pct, p.mem_bytes, p.disk_bytes)
            for p in resp.points
            if p.timestamp_unix >= since
        ]
    except (AgentError, ServiceUnavailable):
        if tgt.sandbox.status == "running":
            raise
    if not points and tgt.sandbox.status == "paused":
        points = await _saved_points(engine, tgt.uuid, since)
    return Metrics(sandbox_id=tgt.sid, range=range_, points=points)


async def _saved_points(engine: AsyncEngine, sb_uuid: uuid.UUID, since: int) -> list[MetricPoint]:
    t = sandbox_metric_points
    q = (
        sa.select(t.c.ts, t.c.cpu_pct, t.c.mem_bytes, t.c.disk_bytes)
        .where(t.c.sandbox_id == sb_uuid, t.c.ts >= datetime.fromtimestamp(since, UTC))
        .order_by(t.c.ts)
    )
    async with autocommit(engine) as conn:
        rows = (await conn.execute(q)).all()
    return [_point(int(r.ts.timestamp()), float(r.cpu_pct), r.mem_bytes, r.disk_bytes) for r in rows]
