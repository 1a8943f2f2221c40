"""The lifetime sweeper (docs/e2b.md §2): ends running sandboxes whose ``end_at`` has passed,
killing them or, with ``on_end = 'pause'``, pausing them. Rules of lifetimes:
``services/lifetimes.py``.

Every replica runs it (about once a second) and they agree through the database: a pass
*claims* its due rows in one statement, picking them ``FOR UPDATE SKIP LOCKED`` (a row another
replica is claiming is skipped, not waited for) and moving their ``end_at`` a lease ahead, so
no other pass sees them as due until the lease runs out. The claim commits at once; no
connection is held across the agent RPCs. Then, per row, if ``end_at`` is still the lease (a
``set_timeout`` or connect since the claim wins), the existing destroy or pause service ends
it, acting for the sandbox's team as the system. A failed end is retried when the lease runs
out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.background import Worker, every
from warren.cp.db import end_reasons
from warren.cp.db.engine import autocommit
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import sandbox_power, sandboxes
from warren.cp.services.context import AuthContext
from warren.errors import InvalidState, NotFound

log = logging.getLogger("warren.lifetimes")

LEASE_S = 60.0  # a claimed row is not due again for this long (an end that fails is retried)
BATCH = 64  # rows one pass claims
CONCURRENCY = 8  # ends one pass runs at once

# $1 now, $2 the lease's end, $3 the batch. The partial index ix_sandboxes_end_at serves it.
CLAIM = text("""
    WITH due AS (
        SELECT id FROM sandboxes
        WHERE end_at <= :now AND status = 'running'
        ORDER BY end_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    UPDATE sandboxes s SET end_at = :lease
    FROM due WHERE s.id = due.id
    RETURNING s.id, s.team_id, s.on_end
""")


@dataclass(frozen=True)
class Claimed:
    sb_uuid: uuid.UUID
    team_id: uuid.UUID
    on_end: str
    lease: datetime


@dataclass
class SweepReport:
    killed: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # changed since the claim, or gone
    failed: list[str] = field(default_factory=list)


async def claim(engine: AsyncEngine, *, now: datetime | None = None, batch: int = BATCH) -> list[Claimed]:
    """Claim the running sandboxes whose lifetime has ended (see module doc)."""
    now = now or clock.now()
    lease = now + timedelta(seconds=LEASE_S)
    async with autocommit(engine) as conn:
        rows = (await conn.execute(CLAIM, {"now": now, "lease": lease, "batch": batch})).all()
    return [Claimed(r.id, r.team_id, r.on_end, lease) for r in rows]


async def end(engine: AsyncEngine, pool: HostClientPool, c: Claimed, report: SweepReport) -> None:
    """Kill or pause one claimed sandbox, unless its lifetime changed since the claim."""
    sid = ids.sandbox_id(c.sb_uuid)
    ctx = AuthContext(kind="session", team_id=c.team_id)  # audited as the system
    try:
        found = await sandboxes.find(engine, ctx, sid)
        if found.sandbox.status != "running" or found.row["end_at"] != c.lease:
            report.skipped.append(sid)
            return
        if c.on_end == "pause":
            await sandbox_power.pause_sandbox(engine, pool, ctx, sid)
            report.paused.append(sid)
        else:
            await sandboxes.destroy_sandbox(engine, pool, ctx, sid, reason=end_reasons.LIFETIME_ENDED)
            report.killed.append(sid)
        log.info("sandbox lifetime ended sandbox=%s action=%s", sid, c.on_end)
    except (NotFound, InvalidState):
        report.skipped.append(sid)  # destroyed or paused meanwhile
    except Exception as e:
        report.failed.append(sid)
        log.warning("sandbox lifetime end failed sandbox=%s (retried in %.0f s): %s", sid, LEASE_S, e)


async def sweep_once(
    engine: AsyncEngine, pool: HostClientPool, *, now: datetime | None = None
) -> SweepReport:
    """One pass: claim what is due, end it (callable directly, e.g. by tests)."""
    report = SweepReport()
    claimed = await claim(engine, now=now)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(c: Claimed) -> None:
        async with sem:
            await end(engine, pool, c, report)

    await asyncio.gather(*(one(c) for c in claimed))
    return report


class LifetimeSweeper(Worker):
    """The worker: :func:`sweep_once` every ``lifetime_sweep_interval_s`` on every replica."""

    task_name = "lifetime-sweeper"

    def __init__(self, engine: AsyncEngine, pool: HostClientPool, settings: Settings) -> None:
        self.engine, self.pool = engine, pool
        self.interval_s = settings.lifetime_sweep_interval_s

    async def _loop(self) -> None:
        await every(self.interval_s, lambda: sweep_once(self.engine, self.pool), log, "lifetime sweep")
