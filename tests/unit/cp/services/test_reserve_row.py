"""A create's first two statements (issue 17, a cheaper create), against a real database:
``q.RESOLVE`` reads the template with the team's candidate hosts, and ``q.RESERVE``
(``warren_reserve_sandbox``, migration 0011) inserts the pending row with its owner, runtime and
egress rules in one call."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from tests.unit.cp.services.e2b_rows import team_and_host
from warren import clock, ids
from warren.cp.db.engine import driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.db.tables import hosts, sandboxes
from warren.footprint import footprint_mb


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", pool_size=2) as e:
        yield e


async def _reserve(engine: AsyncEngine, team: uuid.UUID, host: uuid.UUID, *extra: Any) -> uuid.UUID:
    sb = ids.new_uuid()
    async with driver(engine) as conn:
        res = await conn.fetchrow(
            q.RESERVE,
            sb, team, host, "minimal", 1, 256, 300, 512, True, clock.now(), None, None, 10, 10, 4096,
            4.0, 1.0, *extra,
        )  # fmt: skip
    assert res["outcome"] == "ok", res
    return sb


async def test_the_pending_row_carries_owner_runtime_and_rules(engine: AsyncEngine) -> None:
    team, host = await team_and_host(engine)
    owner = ids.new_uuid()
    rules = {"allow_out": ["10.1.0.0/16"], "deny_out": ["0.0.0.0/0"]}
    with_rules = await _reserve(engine, team, host, owner, "gvisor", json.dumps(rules))
    plain = await _reserve(engine, team, host, None, "crun", None)
    async with engine.connect() as conn:
        c = sandboxes.c
        cols = c.id, c.status, c.replica_id, c.runtime, c.egress
        got = {r.id: r[1:] for r in (await conn.execute(sa.select(*cols))).all()}
    assert got[with_rules] == ("pending", owner, "gvisor", rules)
    # Without rules the column keeps its default: none.
    assert got[plain] == ("pending", None, "crun", {"allow_out": [], "deny_out": []})


async def test_resolve_reads_the_template_with_the_candidate_hosts(engine: AsyncEngine) -> None:
    team, host = await team_and_host(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.update(hosts).values(cpu_cores=8, memory_mb=16384))
    await _reserve(engine, team, host, None, "runc", None)
    async with driver(engine) as conn:
        rows = await conn.fetch(q.RESOLVE, "minimal", team, "")
        unknown_team = await conn.fetch(q.RESOLVE, "minimal", ids.new_uuid(), "")
    assert unknown_team == []
    (row,) = rows
    # The host's own columns and what its active sandboxes take, for the scheduler: memory at
    # their footprints (migration 0021: a 256 MiB runc sandbox with its 32 MiB socket ceiling).
    assert row["id"] == host and row["cpu_cores"] == 8
    assert (row["used_vcpus"], row["used_memory_mb"]) == (1, footprint_mb(256, "runc")) == (1, 288)
    assert (row["held_bytes"], list(row["missing"])) == (0, [])
    assert row["is_byoc"] is False
    # No eligible host: still the team's row, its host columns NULL.
    async with engine.begin() as conn:
        await conn.execute(sa.update(hosts).values(status="unreachable"))
    async with driver(engine) as conn:
        (row,) = await conn.fetch(q.RESOLVE, "minimal", team, "")
    assert row["id"] is None and row["is_byoc"] is False
