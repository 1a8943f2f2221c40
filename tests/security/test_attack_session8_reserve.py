"""Session 8's one-statement reservation (``warren_reserve_sandbox``, migration 0011: 20
arguments; the 17- and 18-argument forms now wrappers) raced the way a tenant's burst of creates
races it, against a real PostgreSQL: many at once, through all three signatures (replicas on
older code during a rolling upgrade), and two teams at once on one host. Expected: never more
than the team's quota (sandboxes, vCPUs, memory), never more than the host's room, whatever
the interleaving. (tests/security/test_quotas.py races the HTTP route for the sandbox count.)
"""

from __future__ import annotations

import asyncio
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
from warren.cp.db.tables import hosts, teams
from warren.footprint import footprint_mb

BURST = 12
# The older signatures, as a replica on older code calls them.
RESERVE_0003 = q.RESERVE.replace(", $18::uuid, $19::text, $20::jsonb)", ")")
RESERVE_0010 = q.RESERVE.replace(", $19::text, $20::jsonb)", ")")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", pool_size=BURST) as e:
        yield e


async def reserve(
    engine: AsyncEngine, team: uuid.UUID, host: uuid.UUID, *, form: int = 20, vcpus: int = 1,
    memory_mb: int = 256, quotas: tuple[int, int, int] = (100, 100, 100_000),
) -> str:  # fmt: skip
    args: list[Any] = [
        ids.new_uuid(), team, host, "minimal", vcpus, memory_mb, 300, 512, True, clock.now(), None,
        None, *quotas, 4.0, 1.0,
    ]  # fmt: skip
    sql = {17: RESERVE_0003, 18: RESERVE_0010, 20: q.RESERVE}[form]
    args += {17: [], 18: [None], 20: [None, "runc", None]}[form]
    async with driver(engine) as conn:
        row = await conn.fetchrow(sql, *args)
    return str(row["outcome"])


async def burst(n: int, make: Any) -> list[str]:
    return list(await asyncio.gather(*(make(i) for i in range(n))))


async def test_a_burst_through_every_signature_stops_at_the_sandbox_quota(engine: AsyncEngine) -> None:
    team, host = await team_and_host(engine)
    got = await burst(
        BURST, lambda i: reserve(engine, team, host, form=(17, 18, 20)[i % 3], quotas=(3, 100, 100_000))
    )
    assert got.count("ok") == 3 and got.count("quota_sandboxes") == BURST - 3, got


@pytest.mark.parametrize(
    ("quotas", "refusal"), [((100, 5, 100_000), "quota_vcpus"), ((100, 100, 1000), "quota_memory_mb")]
)
async def test_a_burst_stops_at_the_vcpu_and_memory_quotas(
    engine: AsyncEngine, quotas: tuple[int, int, int], refusal: str
) -> None:
    """2 vCPUs and 256 MiB each: 5 vCPUs hold two, 1000 MiB hold three."""
    team, host = await team_and_host(engine)
    got = await burst(BURST, lambda i: reserve(engine, team, host, vcpus=2, quotas=quotas))
    want = 2 if refusal == "quota_vcpus" else 3
    assert got.count("ok") == want and got.count(refusal) == BURST - want, got


async def test_two_teams_at_once_never_overfill_one_host(engine: AsyncEngine) -> None:
    """A host with room for four 256 MiB runc sandboxes at their footprints (4 x 288 MiB,
    memory ratio 1.0; migration 0021) holds four, whichever teams race for it."""
    alice, host = await team_and_host(engine)
    mallory = ids.new_uuid()
    async with engine.begin() as conn:
        await conn.execute(teams.insert().values(id=mallory, name="m", slug=mallory.hex))
        await conn.execute(
            sa.update(hosts)
            .where(hosts.c.id == host)
            .values(cpu_cores=64, memory_mb=4 * footprint_mb(256, "runc"))
        )
    got = await burst(BURST, lambda i: reserve(engine, (alice, mallory)[i % 2], host, form=(18, 20)[i % 2]))
    assert got.count("ok") == 4 and got.count("no_capacity") == BURST - 4, got
