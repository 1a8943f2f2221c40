"""The retention pass (``services/retention.py``) on a large table: a fresh embedded PostgreSQL
(fast, migrated) filled with ended sandbox rows (tenant-sized metadata and egress rules) and
audit records, half past their windows; then the passes that work the backlog off, the longest
batch (the longest a lock is held), two replicas at once, and a pass with nothing to do.

    nice -n -19 .venv/bin/python -m bench.retention [--sandboxes 20000] [--audit 400000] \\
        [--pairs 40] [--cidrs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from warren import clock
from warren.config import Settings
from warren.cp.db import migrate
from warren.cp.db.embedded import EmbeddedPostgres
from warren.cp.db.engine import make_engine
from warren.cp.services import retention

FILL = """
    INSERT INTO users (id, email, name) VALUES ('00000000-0000-0000-0000-0000000000a1', 'b@x', 'b');
    INSERT INTO teams (id, name, slug) VALUES ('00000000-0000-0000-0000-0000000000b1', 't', 't');
    INSERT INTO hosts (id, status, created_by) VALUES
        ('00000000-0000-0000-0000-0000000000c1', 'online', '00000000-0000-0000-0000-0000000000a1');
    INSERT INTO sandboxes (id, team_id, host_id, status, created_at, started_at, last_updated,
                           metadata, egress)
    SELECT gen_random_uuid(), '00000000-0000-0000-0000-0000000000b1',
           '00000000-0000-0000-0000-0000000000c1',
           CASE WHEN i % 10 = 0 THEN 'running' ELSE 'stopped' END,
           now() - make_interval(days => CASE WHEN i % 2 = 0 THEN 30 ELSE 1 END),
           now() - make_interval(days => CASE WHEN i % 2 = 0 THEN 30 ELSE 1 END),
           now() - make_interval(days => CASE WHEN i % 2 = 0 THEN 29 ELSE 1 END),
           (SELECT jsonb_object_agg('k' || j || '-' || i, md5(i::text || j) || md5(j::text || i))
              FROM generate_series(1, :pairs) j),
           jsonb_build_object('allow_out', (SELECT jsonb_agg('10.' || (i % 250) || '.' || j || '.0/24')
              FROM generate_series(1, :cidrs) j), 'deny_out', '[]'::jsonb)
    FROM generate_series(1, :sandboxes) i;
    INSERT INTO audit_logs (id, team_id, actor_type, resource_type, resource_id, action, metadata,
                            created_at)
    SELECT gen_random_uuid(), '00000000-0000-0000-0000-0000000000b1', 'api_key', 'apikey',
           'key-' || i, 'create', jsonb_build_object('ip', '203.0.113.7', 'request_id', md5(i::text)),
           now() - make_interval(days => CASE WHEN i % 2 = 0 THEN 120 ELSE 10 END)
    FROM generate_series(1, :audit) i;
    ANALYZE;
"""


async def _timed(label: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    t = time.perf_counter()
    out = await fn()
    print(f"{label}: {time.perf_counter() - t:.2f} s -> {out}")
    return out


async def _longest_batch(engine: Any) -> None:
    """Batch by batch (one batch a call), the slowest one: the longest any row lock is held."""
    worst = {"sandbox": 0.0, "audit": 0.0}
    for _ in range(5):
        t = time.perf_counter()
        await retention.delete_ended_sandboxes(engine, clock.now() - timedelta(days=7), deadline=0)
        worst["sandbox"] = max(worst["sandbox"], time.perf_counter() - t)
        t = time.perf_counter()
        await retention.delete_old_audit(engine, clock.now() - timedelta(days=90), deadline=0)
        worst["audit"] = max(worst["audit"], time.perf_counter() - t)
    ms = {k: round(v * 1000) for k, v in worst.items()}
    print(f"longest single batch of 5: sandbox {ms['sandbox']} ms, audit {ms['audit']} ms")


SIZE = "SELECT pg_size_pretty(pg_database_size(current_database()))"
# The batches' picks, for EXPLAIN (the statements' first CTEs).
PICKS = {
    "sandbox": "SELECT s.id FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id"
    " WHERE s.status IN ('stopped', 'error') AND s.last_updated < now() - interval '7 days'"
    " AND (h.id IS NULL OR h.status = 'online')"
    " ORDER BY s.last_updated LIMIT 200 FOR UPDATE OF s SKIP LOCKED",
    "audit": "SELECT a.id FROM audit_logs a WHERE a.created_at < now() - interval '90 days'"
    " AND (a.created_at, a.id) > ('1970-01-01'::timestamptz, '00000000-0000-0000-0000-000000000000')"
    " ORDER BY a.created_at, a.id LIMIT 2000 FOR UPDATE SKIP LOCKED",
}


async def main(sandboxes: int, audit: int, row: dict[str, int]) -> None:
    base = Path(tempfile.mkdtemp(prefix="warren-bench-retention-"))
    base.chmod(0o755)  # the database runs as the warren service user
    pg = EmbeddedPostgres(base / "pg", port=0, fast=True)
    try:
        pg.start()
        await asyncio.to_thread(migrate.upgrade, pg.url)
        engine = make_engine(pg.url, pool_size=4)
        async with engine.begin() as conn:
            for stmt in FILL.split(";\n"):
                if stmt.strip():
                    await conn.execute(sa.text(stmt), {"sandboxes": sandboxes, "audit": audit, **row})
        async with engine.connect() as conn:
            size = (
                await conn.execute(sa.text("SELECT pg_size_pretty(pg_database_size(current_database()))"))
            ).scalar()
            plans = {
                k: (await conn.execute(sa.text("EXPLAIN " + q))).scalars().all() for k, q in PICKS.items()
            }
        print(f"filled: {sandboxes} sandboxes (half ended 29 days ago, 1 in 10 running; {row}),")
        print(f"{audit} audit records (half 120 days old); database {size}")
        for kind, plan in plans.items():
            print(f"{kind} pick plan:\n  " + "\n  ".join(plan))
        settings = Settings(jwt_secret="x" * 32)
        await _longest_batch(engine)
        both = [retention.retention_pass(engine, settings) for _ in range(2)]
        await _timed("two replicas' passes at once", lambda: asyncio.gather(*both))
        while (
            r := await _timed("pass", lambda: retention.retention_pass(engine, settings))
        ).sandboxes or r.audit:
            pass
        await _timed("pass with nothing to do", lambda: retention.retention_pass(engine, settings))
        await engine.dispose()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--sandboxes", type=int, default=20000)
    p.add_argument("--audit", type=int, default=400000)
    p.add_argument("--pairs", type=int, default=40, help="metadata pairs per sandbox row (~70 B each)")
    p.add_argument("--cidrs", type=int, default=100, help="egress CIDRs per sandbox row")
    a = p.parse_args()
    asyncio.run(main(a.sandboxes, a.audit, {"pairs": a.pairs, "cidrs": a.cidrs}))
