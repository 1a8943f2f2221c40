"""The lifetime sweeper (docs/e2b.md §2): ends running sandboxes whose ``end_at`` has passed,
killing them or, with ``on_end = 'pause'``, pausing them. Rules of lifetimes:
``services/lifetimes.py``.

A ``missing`` sandbox (its host stopped beating) whose lifetime has passed is ended too when
``on_end = 'kill'``: the destroy service marks it ``stopped`` without its host (which the host
monitor cleans up should the host come back). With ``on_end = 'pause'`` it is left as it is:
a pause needs its host, its owner asked for its state to be kept (which only the host holds),
and a paused sandbox counts against the quota as a missing one does. If the host comes back
with it, the monitor makes it ``running`` again and the next pass pauses it; if it comes back
without it, the monitor stops it (``host_lost``); its team may delete it meanwhile.

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
from warren.aio import every
from warren.config import Settings
from warren.cp.background import Worker
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

# :now, the lease's end, the batch. Each branch is index-served: the running rows by the partial
# index ix_sandboxes_end_at (in end_at order), the missing ones by ix_sandboxes_status (rows a
# silent host left behind: few, and gone once it returns or is deleted).
CLAIM = text("""
    WITH due AS (
        SELECT id FROM sandboxes
        WHERE end_at <= :now AND status = 'running'
        ORDER BY end_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), lost AS (
        SELECT id FROM sandboxes
        WHERE status = 'missing' AND on_end = 'kill' AND end_at <= :now
        ORDER BY end_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    UPDATE sandboxes s SET end_at = :lease
    FROM (SELECT id FROM due UNION ALL SELECT id FROM lost) d WHERE s.id = d.id
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
    """Claim the running sandboxes, and the missing ones to kill, whose lifetime has ended (see
    module doc)."""
    now = now or clock.now()
    lease = now + timedelta(seconds=LEASE_S)
    async with autocommit(engine) as conn:
        rows = (await conn.execute(CLAIM, {"now": now, "lease": lease, "batch": batch})).all()
    return [Claimed(r.id, r.team_id, r.on_end, lease) for r in rows]


def endable(status: str, on_end: str) -> bool:
    """Whether a sandbox whose lifetime has passed is ended now: a running one, or a missing one
    to kill (a pause waits for its host; module doc)."""
    return status == "running" or (status == "missing" and on_end == "kill")


async def end(engine: AsyncEngine, pool: HostClientPool, c: Claimed, report: SweepReport) -> None:
    """Kill or pause one claimed sandbox, unless its lifetime changed since the claim."""
    sid = ids.sandbox_id(c.sb_uuid)
    ctx = AuthContext(kind="session", team_id=c.team_id)  # audited as the system
    try:
        found = await sandboxes.find(engine, ctx, sid)
        if not endable(found.sandbox.status, c.on_end) or found.row["end_at"] != c.lease:
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
        await every(self.interval_s, lambda: sweep_once(self.engine, self.pool), log, "lifetime-sweep")
