"""Issue 18: the `pending` rows of a control-plane replica whose lease is gone or expired (it
was ``kill -9``-ed mid-create) settle in one monitor pass, without the grace; the rows of live
replicas keep the grace rule (real database and leases, fake clock, fake agent)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from warren import clock, ids
from warren.cp.db.tables import replica_leases
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.services import audit

from .conftest import Rows
from .test_monitor_pending import GRACE_S, ReportingPool, _beat

TTL_S = 20.0


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", "audit_logs", "replica_leases") as e:
        yield e


async def _lease(engine: AsyncEngine, *, ttl_s: float = TTL_S) -> uuid.UUID:
    """A replica's lease, renewed now on the (fake) clock, expiring ``ttl_s`` later."""
    r = ids.new_uuid()
    async with engine.begin() as conn:
        await conn.execute(
            replica_leases.insert().values(id=r, expires_at=clock.now() + timedelta(seconds=ttl_s))
        )
    return r


async def _drop(engine: AsyncEngine, replica: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await conn.execute(replica_leases.delete().where(replica_leases.c.id == replica))


def _monitor(engine: AsyncEngine, pool: ReportingPool, **kw: Any) -> HostMonitor:
    return HostMonitor(engine, pool, audit.record, stale_s=90, pending_grace_s=GRACE_S, **kw)  # type: ignore[arg-type]


async def test_a_dead_replicas_creates_settle_in_one_pass(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    dead = await _lease(engine)
    made, lost, busy = [await rows.sandbox(team, h, "pending", replica_id=dead) for _ in range(3)]
    pool = ReportingPool()
    agent = pool.get({"id": h})
    agent.alive = {ids.sandbox_id(made)}  # its create finished on the host
    agent.creating = {ids.sandbox_id(busy)}  # its RPC reached the host: still being made
    m = _monitor(engine, pool)

    # The replica is alive (its lease runs for TTL_S more): nothing moves, grace or not.
    fake_clock.advance(1)
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert not r.to_running and not r.to_error
    assert [await rows.status(s) for s in (made, lost, busy)] == ["pending"] * 3

    # Its lease expires (kill -9: no more renewals), long before the grace would end.
    fake_clock.advance(TTL_S)
    assert TTL_S + 1 < GRACE_S
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert r.to_running == [ids.sandbox_id(made)] and r.to_error == [ids.sandbox_id(lost)]
    assert [await rows.status(s) for s in (made, lost, busy)] == ["running", "error", "pending"]

    # The one the host was still making settles in the pass after it is made.
    agent.creating.clear()
    agent.alive.add(ids.sandbox_id(busy))
    fake_clock.advance(1)
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert r.to_running == [ids.sandbox_id(busy)]


async def test_a_deleted_lease_counts_as_dead_a_live_one_keeps_the_grace(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """Two replicas on one host: the one whose lease is gone (deleted at shutdown, or purged)
    has its create settled at once; the live one's, younger than the grace, is left alone; an
    owner-less row (a replica of the previous release) keeps the grace rule."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    gone, live = await _lease(engine), await _lease(engine, ttl_s=3600)
    of_gone = await rows.sandbox(team, h, "pending", replica_id=gone)
    of_live = await rows.sandbox(team, h, "pending", replica_id=live)
    unowned = await rows.sandbox(team, h, "pending")
    await _drop(engine, gone)
    pool = ReportingPool()
    m = _monitor(engine, pool)

    fake_clock.advance(GRACE_S - 5)
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert r.to_error == [ids.sandbox_id(of_gone)]
    assert [await rows.status(s) for s in (of_gone, of_live, unowned)] == ["error", "pending", "pending"]

    # Past the grace, the grace rule settles the others as it always did.
    fake_clock.advance(10)
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert sorted(r.to_error) == sorted([ids.sandbox_id(of_live), ids.sandbox_id(unowned)])


async def test_the_monitors_own_replica_is_alive_whatever_its_row_says(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """A monitor's replica is running it: its creates are never another replica's orphans,
    even when its lease row reads expired (a clock moved past its last renewal)."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    mine = await _lease(engine)
    sb = await rows.sandbox(team, h, "pending", replica_id=mine)
    pool = ReportingPool()
    fake_clock.advance(TTL_S + 1)
    await _beat(engine, h, fake_clock)
    r = await _monitor(engine, pool, replica_id=mine).run_once()
    assert not r.to_error and await rows.status(sb) == "pending"
    # Any other replica's monitor sees a dead replica's create.
    r = await _monitor(engine, pool, replica_id=ids.new_uuid()).run_once()
    assert r.to_error == [ids.sandbox_id(sb)]


async def test_without_the_hosts_creates_a_dead_replicas_row_waits(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """An agent that does not report its creates in flight cannot say the RPC never arrived:
    the long rule holds, lease or not."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    dead = await _lease(engine)
    sb = await rows.sandbox(team, h, "pending", replica_id=dead)
    pool = ReportingPool()
    pool.get({"id": h}).reports = False
    fake_clock.advance(GRACE_S * 3)
    await _beat(engine, h, fake_clock)
    r = await _monitor(engine, pool).run_once()
    assert not r.to_error and await rows.status(sb) == "pending"


async def test_a_row_changed_after_the_host_was_asked_is_left_alone(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """A dead replica's row reserved after the host was asked is not judged by that answer."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    dead = await _lease(engine, ttl_s=-1)
    pool = ReportingPool()
    agent = pool.get({"id": h})
    later: list[uuid.UUID] = []
    real_list = agent.ListSandboxes

    async def list_sandboxes(request: Any, *, timeout: float | None = None) -> Any:
        if not later:
            fake_clock.advance(1)
            later.append(await rows.sandbox(team, h, "pending", replica_id=dead))
        return await real_list(request, timeout=timeout)

    agent.ListSandboxes = list_sandboxes  # type: ignore[method-assign]
    await _beat(engine, h, fake_clock)
    r = await _monitor(engine, pool).run_once()
    assert not r.to_error and await rows.status(later[0]) == "pending"
    async with engine.connect() as conn:
        owner = (await conn.execute(sa.text("SELECT replica_id FROM sandboxes"))).scalar()
    assert owner == dead
