"""Session 17: what session 16's stream re-check (services/stream_revocation.py) costs others when
a tenant holds as many distinct credentials open as the bounds let it.

Every CP process re-reads, in one statement every 5 s, the credentials of all its open streams
(one grant per distinct credential). A tenant makes the most grants with one API key per stream
(or one member token per team): the per-owner stream cap (``WARREN_MAX_STREAMS_PER_OWNER``, 128)
bounds them, but many accounts add up, and a statement that scanned a table would cost every
tenant as the tables grow. Held: with 20 000 rows in each table the statement reads a bounded
number of buffers per grant (index lookups only), for one owner's 128 grants and for 32 owners'
4 096, under the generic plan a CP process runs in steady state (~6 buffers a grant: 128
grants ~1.4 ms, 4 096 ~25 ms at 20 000 rows) and under the custom plans of the first five runs
on each pooled connection; the time is printed, not asserted (the machine is shared). Fixed:
those custom plans hashed whole tables from ~100 grants on (sandboxes, teams three times, API
keys, memberships: ~1 750 buffers, 40-230 ms here at 20 000 rows, growing with the tables); an
``OFFSET 0`` in each ``EXISTS`` keeps them index lookups.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.db.engine import driver, make_engine
from warren.cp.services import stream_revocation as sr

ROWS = 20_000
OWNER_CAP = 128  # WARREN_MAX_STREAMS_PER_OWNER's default
HITS_PER_GRANT = 12  # three index descents (the row, its team) of a few pages each


@pytest.fixture(scope="module")
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(db_url, pool_size=2)
    async with driver(eng) as conn:
        await conn.execute(
            f"""
            INSERT INTO users (id, email)
                SELECT md5('u' || i)::uuid, 'u' || i || '@example.com' FROM generate_series(1, {ROWS}) i;
            INSERT INTO teams (id, name, slug)
                SELECT md5('t' || i)::uuid, 't' || i, 't-' || i FROM generate_series(1, {ROWS}) i;
            INSERT INTO users_teams (user_id, team_id, role)
                SELECT md5('u' || i)::uuid, md5('t' || i)::uuid, 'owner' FROM generate_series(1, {ROWS}) i;
            INSERT INTO team_api_keys (id, team_id, key_hash, key_prefix, created_by)
                SELECT md5('k' || i)::uuid, md5('t' || i)::uuid, 'h' || i, 'p', md5('u' || i)::uuid
                FROM generate_series(1, {ROWS}) i;
            INSERT INTO hosts (id, created_by) VALUES (md5('h')::uuid, md5('u1')::uuid);
            INSERT INTO sandboxes (id, team_id, host_id)
                SELECT md5('s' || i)::uuid, md5('t' || i)::uuid, md5('h')::uuid
                FROM generate_series(1, {ROWS}) i;
            ANALYZE;
            """
        )
    yield eng
    await eng.dispose()


def _uuid(tag: str, i: int) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(f"{tag}{i}".encode()).hexdigest())


def _array(values: Sequence[object]) -> str:
    """A literal array for EXECUTE (which takes no bind parameters)."""
    items = ",".join("NULL" if v is None else f'"{v}"' for v in values)
    return "'{" + items + "}'"


def _grants(n: int) -> list[sr.Grant]:
    """``n`` distinct grants that all hold, a third each of API keys, memberships, envd tokens."""
    out: list[sr.Grant] = []
    for i in range(1, n + 1):
        j = i * 7 % ROWS + 1  # spread over the tables
        kind = i % 3
        if kind == 0:
            out.append(sr.Grant("key", _uuid("k", j)))
        elif kind == 1:
            out.append(sr.Grant("member", _uuid("u", j), _uuid("t", j)))
        else:
            out.append(sr.Grant("sandbox", _uuid("s", j), epoch=0))
    return out


async def _explain(engine: AsyncEngine, grants: list[sr.Grant], mode: str) -> tuple[int, float]:
    """The statement's buffers and time under the plan ``mode`` forces: a CP process runs the
    prepared statement every 5 s; PostgreSQL plans its first five runs per connection afresh
    (custom plans) and may keep a generic plan after."""
    async with driver(engine) as conn:
        await conn.execute(f"SET plan_cache_mode = {mode}")
        await conn.execute("PREPARE recheck(int[], text[], uuid[], uuid[], bigint[], text[]) AS" + sr._FAILED)
        try:
            cols = (
                list(range(len(grants))),
                [g.kind for g in grants],
                [g.a for g in grants],
                [g.b for g in grants],
                [g.epoch for g in grants],
                [g.h for g in grants],
            )
            args = ", ".join(_array(c) for c in cols)
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE recheck({args})")
        finally:
            await conn.execute("DEALLOCATE recheck; RESET plan_cache_mode")
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]
    hits = top["Plan"]["Shared Hit Blocks"] + top["Plan"]["Shared Read Blocks"]
    return hits, top["Execution Time"]


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
@pytest.mark.parametrize("owners", [1, 32])
async def test_the_recheck_reads_a_bounded_number_of_pages_per_grant(
    engine: AsyncEngine, owners: int, mode: str
) -> None:
    grants = _grants(OWNER_CAP * owners)
    assert await sr.failed(engine, grants) == set()  # they all hold: every EXISTS is evaluated
    hits, ms = await _explain(engine, grants, mode)
    t0 = time.monotonic()
    for _ in range(10):
        await sr.failed(engine, grants)
    print(f"wall of the real call (asyncpg prepared), mean of 10: {(time.monotonic() - t0) * 100:.1f} ms")
    started = time.process_time()
    await sr.failed(engine, grants)
    cpu_ms = (time.process_time() - started) * 1000
    print(
        f"{mode}, {len(grants)} grants: {hits} buffers ({hits / len(grants):.1f} a grant), "
        f"{ms:.1f} ms in PG, CP CPU {cpu_ms:.1f} ms"
    )
    assert hits <= HITS_PER_GRANT * len(grants), f"{hits} buffers for {len(grants)} grants"
