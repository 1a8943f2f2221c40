"""Retention (docs/operations.md, "Retention"): what a tenant's loops leave in PostgreSQL is
deleted once old enough, so their growth is bounded by a rate times a window.

- **Ended sandboxes**: rows ``stopped`` or ``error`` whose last update (their end) is older than
  ``WARREN_SANDBOX_RETENTION_DAYS``. Each may hold ~64 KiB of egress rules and ~72 KiB of E2B
  metadata; no list shows them, only ``GET /v1/sandboxes/{id}`` (404 once deleted, as for E2B
  already). Their saved metric points go with them. A row whose host exists but is not
  ``online`` is kept: the host monitor destroys a sandbox a host still runs only while its row
  says it ended, and only on online hosts. Their usage is added to ``team_usage_retired`` in the
  same statement, so the ``warren_team_*`` counters (``platform_metrics.py``) never go down.
- **Audit records** older than ``WARREN_AUDIT_RETENTION_DAYS``, except the create record of a
  snapshot that still exists: E2B's ``list_snapshots(sandbox_id=…)`` finds a snapshot's source
  there (``e2b_snapshots.py``), and those are bounded by the snapshot quota.
- **A deleted team's builds**: its ended ``template_builds`` rows and their logs (up to
  ``WARREN_BUILD_MAX_LOG_MB`` each), once ended :data:`DELETED_TEAM_BUILDS_AFTER` ago (its
  delete cancelled those still running; they end within seconds). No one can read them any
  more; a live team's are bounded by ``template_builds.MAX_ENDED_BUILDS_KEPT``. Always on.

0 days keeps a kind for ever. Every replica runs the pass; each batch is one short statement
that picks its rows ``FOR UPDATE SKIP LOCKED`` (rows another replica is deleting are skipped,
never waited for) and commits at once, so no lock is held for long. A pass stops after
:data:`PASS_BUDGET_S` of batches; the next one goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.aio import every
from warren.config import Settings
from warren.cp.background import Worker
from warren.cp.db.engine import autocommit
from warren.cp.telemetry import REGISTRY

log = logging.getLogger("warren.retention")

SANDBOX_BATCH = 200  # rows of up to ~140 KiB each (TOASTed egress rules and metadata)
AUDIT_BATCH = 2000
BUILD_BATCH = 20  # rows with their logs, up to WARREN_BUILD_MAX_LOG_MB each
DELETED_TEAM_BUILDS_AFTER = timedelta(minutes=10)
PASS_BUDGET_S = 20.0  # real seconds of batches in one pass (a backlog is worked off pass by pass)

DELETED = Counter(
    "warren_retention_deleted",
    "Rows this replica's retention passes deleted: sandbox (ended sandboxes), metric_point "
    "(their saved samples), audit (audit records), build (a deleted team's builds).",
    ["kind"],
    registry=REGISTRY,
)
for _kind in ("sandbox", "metric_point", "audit", "build"):
    DELETED.labels(_kind)

# One batch of ended sandboxes: :cutoff, :batch, :now. The partial index ix_sandboxes_ended
# serves the pick; usage is summed as platform_metrics._USAGE sums an ended row (exact numerics).
_SANDBOXES = text("""
    WITH doomed AS (
        SELECT s.id FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id
        WHERE s.status IN ('stopped', 'error') AND s.last_updated < :cutoff
          AND (h.id IS NULL OR h.status = 'online')
        ORDER BY s.last_updated
        LIMIT :batch
        FOR UPDATE OF s SKIP LOCKED
    ), gone AS (
        DELETE FROM sandboxes s USING doomed d
        WHERE s.id = d.id AND s.status IN ('stopped', 'error')
        RETURNING s.id, s.team_id, s.vcpus, s.memory_mb,
                  CASE WHEN s.started_at IS NULL THEN 0
                       ELSE greatest(0, extract(epoch FROM s.last_updated - s.created_at)) END AS secs,
                  CASE WHEN s.started_at IS NULL THEN 0 ELSE s.egress_bytes END AS egress
    ), points AS (
        DELETE FROM sandbox_metric_points p USING gone g WHERE p.sandbox_id = g.id RETURNING 1
    ), usage AS (
        INSERT INTO team_usage_retired AS u
            (team_id, sandboxes, secs, vcpu_secs, mem_secs, egress, updated_at)
        SELECT team_id, count(*), sum(secs), sum(secs * vcpus), sum(secs * memory_mb), sum(egress),
               CAST(:now AS timestamptz)
        FROM gone GROUP BY team_id ORDER BY team_id
        ON CONFLICT (team_id) DO UPDATE SET
            sandboxes = u.sandboxes + excluded.sandboxes, secs = u.secs + excluded.secs,
            vcpu_secs = u.vcpu_secs + excluded.vcpu_secs, mem_secs = u.mem_secs + excluded.mem_secs,
            egress = u.egress + excluded.egress, updated_at = excluded.updated_at
    )
    SELECT (SELECT count(*) FROM gone) AS sandboxes, (SELECT count(*) FROM points) AS points
""")

# One batch of audit records past a pass's cursor (:after_at, :after_id): :cutoff, :batch.
# Walking by cursor, a pass reads the snapshot create records it keeps once, not once a batch.
_AUDIT = text("""
    WITH batch AS (
        SELECT a.id, a.created_at, a.team_id, a.resource_type, a.action, a.resource_id
        FROM audit_logs a
        WHERE a.created_at < :cutoff AND (a.created_at, a.id) > (:after_at, :after_id)
        ORDER BY a.created_at, a.id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM audit_logs a USING batch b
        WHERE a.id = b.id AND NOT (
            b.resource_type = 'snapshot' AND b.action = 'create' AND EXISTS (
                SELECT 1 FROM templates t
                WHERE t.team_id = b.team_id AND t.name = b.resource_id AND t.type = 'snapshot'
                  AND t.created_at <= b.created_at))
        RETURNING 1
    ), last AS (
        SELECT created_at, id FROM batch ORDER BY created_at DESC, id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM batch) AS seen, (SELECT count(*) FROM gone) AS deleted,
           (SELECT created_at FROM last) AS last_at, (SELECT id FROM last) AS last_id
""")

# One batch of a deleted team's ended builds (their logs go with them, ON DELETE CASCADE):
# :cutoff, :batch.
_DELETED_TEAMS_BUILDS = text("""
    WITH doomed AS (
        SELECT b.id FROM template_builds b JOIN teams t ON t.id = b.team_id
        WHERE t.deleted_at IS NOT NULL AND b.status NOT IN ('queued', 'running')
          AND coalesce(b.finished_at, b.created_at) < :cutoff
        LIMIT :batch
        FOR UPDATE OF b SKIP LOCKED
    ), gone AS (
        DELETE FROM template_builds b USING doomed d WHERE b.id = d.id RETURNING 1
    )
    SELECT count(*) FROM gone
""")

_FIRST = (datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=0))  # before every record


@dataclass
class RetentionReport:
    sandboxes: int = 0
    metric_points: int = 0
    audit: int = 0
    builds: int = 0


def _cutoff(days: int) -> datetime | None:
    return clock.now() - timedelta(days=days) if days > 0 else None


async def delete_ended_sandboxes(
    engine: AsyncEngine, cutoff: datetime, *, batch: int = SANDBOX_BATCH, deadline: float | None = None
) -> tuple[int, int]:
    """Delete ended sandbox rows last updated before ``cutoff``, batch by batch, until none is
    left or ``deadline`` (``time.monotonic``) passes; (rows, metric points) deleted."""
    rows = points = 0
    while True:
        params = {"cutoff": cutoff, "batch": batch, "now": clock.now()}
        async with autocommit(engine) as conn:
            got = (await conn.execute(_SANDBOXES, params)).one()
        rows, points = rows + got.sandboxes, points + got.points
        DELETED.labels("sandbox").inc(got.sandboxes)
        DELETED.labels("metric_point").inc(got.points)
        if got.sandboxes < batch or (deadline is not None and time.monotonic() >= deadline):
            return rows, points
        await asyncio.sleep(0)


async def delete_old_audit(
    engine: AsyncEngine, cutoff: datetime, *, batch: int = AUDIT_BATCH, deadline: float | None = None
) -> int:
    """Delete audit records created before ``cutoff`` (but the kept ones, see module doc), batch
    by batch, until none is left or ``deadline`` passes; how many."""
    deleted = 0
    after_at, after_id = _FIRST
    while True:
        params = {"cutoff": cutoff, "batch": batch, "after_at": after_at, "after_id": after_id}
        async with autocommit(engine) as conn:
            got = (await conn.execute(_AUDIT, params)).one()
        deleted += got.deleted
        DELETED.labels("audit").inc(got.deleted)
        if got.seen < batch or (deadline is not None and time.monotonic() >= deadline):
            return deleted
        after_at, after_id = got.last_at, got.last_id
        await asyncio.sleep(0)


async def delete_deleted_teams_builds(
    engine: AsyncEngine, cutoff: datetime, *, batch: int = BUILD_BATCH, deadline: float | None = None
) -> int:
    """Delete deleted teams' builds that ended before ``cutoff`` (with their logs), batch by
    batch, until none is left or ``deadline`` passes; how many."""
    deleted = 0
    while True:
        async with autocommit(engine) as conn:
            params = {"cutoff": cutoff, "batch": batch}
            got = int((await conn.execute(_DELETED_TEAMS_BUILDS, params)).scalar_one())
        deleted += got
        DELETED.labels("build").inc(got)
        if got < batch or (deadline is not None and time.monotonic() >= deadline):
            return deleted
        await asyncio.sleep(0)


async def retention_pass(engine: AsyncEngine, settings: Settings) -> RetentionReport:
    """One pass over every kind (callable directly, e.g. by tests); logs what it deleted."""
    report = RetentionReport()
    deadline = time.monotonic() + PASS_BUDGET_S
    sandbox_cutoff = _cutoff(settings.sandbox_retention_days)
    if sandbox_cutoff is not None:
        report.sandboxes, report.metric_points = await delete_ended_sandboxes(
            engine, sandbox_cutoff, deadline=deadline
        )
    audit_cutoff = _cutoff(settings.audit_retention_days)
    if audit_cutoff is not None:
        # Half the budget at least: a sandbox backlog must not starve the audit log.
        report.audit = await delete_old_audit(
            engine, audit_cutoff, deadline=max(deadline, time.monotonic() + PASS_BUDGET_S / 2)
        )
    report.builds = await delete_deleted_teams_builds(
        engine, clock.now() - DELETED_TEAM_BUILDS_AFTER, deadline=time.monotonic() + PASS_BUDGET_S / 4
    )
    if report.sandboxes or report.audit or report.builds:
        log.info(
            "retention pass deleted %d ended sandboxes (before %s, with %d metric points), %d audit"
            " records (before %s) and %d builds of deleted teams",
            report.sandboxes, sandbox_cutoff, report.metric_points, report.audit, audit_cutoff,
            report.builds,
        )  # fmt: skip
    return report


class RetentionWorker(Worker):
    """The worker: :func:`retention_pass` every ``retention_interval_s`` on every replica."""

    task_name = "retention"

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    async def _loop(self) -> None:
        await every(
            self.settings.retention_interval_s,
            lambda: retention_pass(self.engine, self.settings),
            log,
            "retention",
        )
