"""Capacity-aware scheduling and the reserve statement against a real database: a host takes a
sandbox only while its active reservations fit its capacity times the overcommit ratios, and
the team's quotas and the host's last slot hold under concurrent reserves. Memory is counted at
each sandbox's footprint (warren/footprint.py, migration 0021; these hosts never reported a
default runtime: runc's rule, a 256 MiB sandbox takes 288 MiB)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import driver
from warren.cp.db.queries.sandboxes import RESERVE
from warren.cp.hosts.scheduler import Overcommit, Placement, Reservation, RoundRobinScheduler
from warren.errors import ServiceUnavailable
from warren.footprint import footprint_mb

from .conftest import Rows

OC = Overcommit(cpu=2.0, memory=1.0)


def fp(memory_mb: int) -> int:
    """The footprint of a runc sandbox (these hosts' default, and _reserve's runtime)."""
    return footprint_mb(memory_mb, "runc")


async def _size(engine: AsyncEngine, host: uuid.UUID, cpu_cores: int, memory_mb: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE hosts SET cpu_cores = :c, memory_mb = :m WHERE id = :h"),
            {"c": cpu_cores, "m": memory_mb, "h": host},
        )


async def _pick(engine: AsyncEngine, s: RoundRobinScheduler, team: uuid.UUID, need: Reservation) -> uuid.UUID:
    async with engine.connect() as conn:
        host: uuid.UUID = (await s.select_host(conn, team, False, Placement(need=need)))["id"]
        return host


async def test_a_host_without_room_is_skipped_and_none_with_room_is_no_capacity(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    full, free = await rows.host(admin, created_offset_s=0), await rows.host(admin, created_offset_s=1)
    # Room for a 768 MiB and a 256 MiB sandbox at their footprints (864 + 288 MiB), no more.
    await _size(engine, full, 1, fp(768) + fp(256))
    await _size(engine, free, 1, fp(768) + fp(256))
    await rows.sandbox(team, full, status="paused", vcpus=1, memory_mb=768)  # paused keeps its memory
    await rows.sandbox(team, free, status="stopped", vcpus=1, memory_mb=1024)  # stopped holds nothing
    s = RoundRobinScheduler()
    need = Reservation(1, 512, OC)
    assert {await _pick(engine, s, team, need) for _ in range(4)} == {free}
    assert {await _pick(engine, s, team, Reservation(1, 256, OC)) for _ in range(4)} == {full, free}
    # CPU: 1 core x 2 = 2 vCPUs; 1 is taken on `full`.
    assert {await _pick(engine, s, team, Reservation(2, 128, OC)) for _ in range(4)} == {free}
    with pytest.raises(ServiceUnavailable) as e:
        await _pick(engine, s, team, Reservation(3, 128, OC))
    assert e.value.code == "no_capacity"
    # A host that reported no capacity (0) is not bounded by it.
    await _size(engine, full, 0, 0)
    assert await _pick(engine, s, team, Reservation(64, 1 << 20, OC)) == full


async def _reserve(
    engine: AsyncEngine, team: uuid.UUID, host: uuid.UUID, *, memory_mb: int = 256, quota: int = 100
) -> str:
    async with driver(engine) as conn:
        row = await conn.fetchrow(
            RESERVE,
            ids.new_uuid(), team, host, "minimal", 1, memory_mb, 60, 64, True, clock.now(), ids.ZERO_UUID,
            ids.ZERO_UUID, quota, 1000, 1 << 20, OC.cpu, OC.memory, None, "runc", None,
        )  # fmt: skip
    assert row is not None
    return str(row["outcome"])


async def test_parallel_reserves_cannot_pass_the_quota_or_overfill_the_host(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    team, other = await rows.team(), await rows.team()
    host = await rows.host(admin)
    await _size(engine, host, 64, 100_000)
    outcomes = await asyncio.gather(*(_reserve(engine, team, host, quota=3) for _ in range(5)))
    assert sorted(outcomes) == ["ok"] * 3 + ["quota_sandboxes"] * 2
    # The host has room for exactly two more 256 MiB sandboxes (at their footprints): of four
    # racing teams' reserves, two get in.
    await _size(engine, host, 64, 3 * fp(256) + 2 * fp(256))
    outcomes = await asyncio.gather(*(_reserve(engine, other, host) for _ in range(4)))
    assert sorted(outcomes) == ["no_capacity"] * 2 + ["ok"] * 2
    async with engine.connect() as conn:
        n = (await conn.execute(sa.text("SELECT count(*) FROM sandboxes WHERE status = 'pending'"))).scalar()
    assert n == 5


async def test_reserve_refuses_a_gone_host_and_a_deleted_team(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin, status="draining")
    assert await _reserve(engine, team, host) == "host_gone"
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE teams SET deleted_at = now() WHERE id = :t"), {"t": team})
    assert await _reserve(engine, team, host) == "no_team"
