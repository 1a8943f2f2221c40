"""The replica lease (``services/replica_lease.py``) and the reservation recording its owner
(``warren_reserve_sandbox``, migration 0010), against a real database with the fake clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from tests.unit.cp.services.e2b_rows import team_and_host
from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.db.tables import replica_leases, sandboxes
from warren.cp.services import replica_lease
from warren.cp.services.replica_lease import PURGE_AFTER_S, ReplicaLease


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", "replica_leases", pool_size=4) as e:
        yield e


def _settings(**kw: Any) -> Settings:
    return Settings(jwt_secret="x" * 32, **kw)


async def _leases(engine: AsyncEngine) -> dict[uuid.UUID, datetime]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(replica_leases.c.id, replica_leases.c.expires_at))).all()
    return {r.id: r.expires_at for r in rows}


def test_the_ttl_must_outlive_a_late_renewal() -> None:
    with pytest.raises(ValueError, match="REPLICA_LEASE_TTL_S"):
        _settings(replica_lease_interval_s=5, replica_lease_ttl_s=9)
    s = _settings()
    assert s.replica_lease_ttl_s >= 2 * s.replica_lease_interval_s


async def test_acquire_renew_release(engine: AsyncEngine, fake_clock: Any) -> None:
    lease = ReplicaLease(engine, _settings())
    assert lease.owner is None  # nothing taken yet: a create records no owner
    await lease.acquire()
    assert lease.owner == lease.id and replica_lease.owner_of(engine) == lease.id
    first = (await _leases(engine))[lease.id]
    assert first == pytest.approx(clock.now() + timedelta(seconds=lease.ttl_s), abs=timedelta(seconds=5))

    fake_clock.advance(30)
    await lease.renew()
    assert (await _leases(engine))[lease.id] - first >= timedelta(seconds=30)

    await lease.release()
    assert await _leases(engine) == {} and lease.owner is None


async def test_two_replicas_and_the_purge(engine: AsyncEngine, fake_clock: Any) -> None:
    """Each replica holds its own lease; a replica that starts deletes leases expired over an
    hour ago (a dead replica's), and a live replica whose row went anyway takes it back."""
    a = ReplicaLease(engine, _settings())
    await a.acquire()
    fake_clock.advance(PURGE_AFTER_S + 60)  # `a` is long dead by now (no renewals)
    b = ReplicaLease(engine, _settings())
    await b.acquire()
    assert set(await _leases(engine)) == {b.id}
    c = ReplicaLease(engine, _settings())
    await c.acquire()
    assert set(await _leases(engine)) == {b.id, c.id} and b.id != c.id
    await a.renew()  # `a` was only slow: it comes back
    assert set(await _leases(engine)) == {a.id, b.id, c.id}
    for lease in (a, b, c):
        await lease.release()


async def test_the_worker_renews(engine: AsyncEngine) -> None:
    lease = ReplicaLease(engine, _settings(replica_lease_interval_s=0.05, replica_lease_ttl_s=10))
    await lease.acquire()
    first = (await _leases(engine))[lease.id]
    lease.start()
    try:

        async def moved() -> bool:
            return (await _leases(engine))[lease.id] > first

        for _ in range(600):  # up to 60 s
            if await moved():
                break
            await asyncio.sleep(0.1)
        assert await moved()
    finally:
        await lease.stop()
        await lease.release()


async def test_an_unreachable_database_leaves_the_owner_unset(fake_clock: Any) -> None:
    """The CP starts without its database (as it always has); its creates then record no
    owner, so they settle by the grace rule, never early."""
    dead = "postgresql://nobody@127.0.0.1:1/none"
    from warren.cp.db.engine import make_engine

    engine = make_engine(dead, pool_size=1, pool_timeout=1)
    try:
        lease = ReplicaLease(engine, _settings(replica_lease_interval_s=2, replica_lease_ttl_s=10))
        await lease.acquire()
        assert lease.owner is None and replica_lease.owner_of(engine) is None
        await lease.release()  # logged, not raised
    finally:
        await engine.dispose()


# The overloads older replicas call (migration 0011 made them wrappers of the 20-argument one).
_RESERVE_18 = q.RESERVE.replace(", $19::text, $20::jsonb", "")
_RESERVE_17 = q.RESERVE.replace(", $18::uuid, $19::text, $20::jsonb", "")


async def _reserve(conn: asyncpg.Connection, team: uuid.UUID, host: uuid.UUID, *owner: Any) -> str:
    sb = ids.new_uuid()
    args = (
        sb,
        team,
        host,
        "minimal",
        1,
        256,
        300,
        512,
        True,
        clock.now(),
        None,
        None,
        10,
        10,
        4096,
        4.0,
        1.0,
    )
    if owner:
        res = await conn.fetchrow(_RESERVE_18, *args, *owner)
    else:  # the 17-argument function: what a replica of the previous release calls
        res = await conn.fetchrow(_RESERVE_17, *args)
    assert res["outcome"] == "ok", res
    return str(sb)


async def test_the_reservation_records_its_owner(engine: AsyncEngine) -> None:
    team, host = await team_and_host(engine)
    owner = ids.new_uuid()
    async with driver(engine) as conn:
        owned = await _reserve(conn, team, host, owner)
        unowned = await _reserve(conn, team, host, None)
        old_caller = await _reserve(conn, team, host)
    async with engine.connect() as conn:
        got = dict((await conn.execute(sa.select(sandboxes.c.id, sandboxes.c.replica_id))).all())
    assert got == {uuid.UUID(owned): owner, uuid.UUID(unowned): None, uuid.UUID(old_caller): None}
    # The quota check is the 17-argument function's, so the owned overload refuses the same.
    async with driver(engine) as conn:
        args = (ids.new_uuid(), team, host, "minimal", 1, 256, 300, 512, True, clock.now(), None, None)
        res = await conn.fetchrow(_RESERVE_18, *args, 3, 10, 4096, 4.0, 1.0, owner)
    assert res["outcome"] == "quota_sandboxes" and res["used_sandboxes"] == 3
