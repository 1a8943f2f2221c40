"""Lifetime rules (``services/lifetimes.py``) and the sweeper's claim (``services/
lifetime_sweeper.py``) against a real database, with the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from tests.unit.cp.services.e2b_rows import sandbox, team_and_host
from warren import clock, ids
from warren.config import Settings
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services import lifetime_sweeper as sweeper
from warren.cp.services.lifetimes import check_lifetime, extended
from warren.errors import InvalidRequest

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: object) -> Settings:
    return Settings(jwt_secret="x" * 32, e2b_max_lifetime_s=3600)


def test_check_lifetime(settings: Settings) -> None:
    assert check_lifetime(settings, 1) == 1
    assert check_lifetime(settings, 3600) == 3600
    for bad in (0, -5, 3601, True, 2.5, "10", None):
        with pytest.raises(InvalidRequest):
            check_lifetime(settings, bad)


def test_extended_never_shortens() -> None:
    assert extended(T0 + timedelta(seconds=500), T0, 60) == T0 + timedelta(seconds=500)
    assert extended(T0 + timedelta(seconds=10), T0, 60) == T0 + timedelta(seconds=60)
    assert extended(None, T0, 60) is None  # no lifetime is longer than any


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", "audit_logs", pool_size=4) as e:
        yield e


@pytest.fixture
def fake_clock() -> Iterator[None]:
    yield
    clock.reset()


async def _end_at(engine: AsyncEngine, s: object) -> datetime | None:
    async with engine.connect() as conn:
        value: datetime | None = (
            await conn.execute(sa.select(sandboxes.c.end_at).where(sandboxes.c.id == s))
        ).scalar()
    return value


async def test_claim_takes_due_running_rows_once(engine: AsyncEngine, fake_clock: None) -> None:
    team, host = await team_and_host(engine)
    due = {await sandbox(engine, team, host, end_in_s=-1) for _ in range(6)}
    later = await sandbox(engine, team, host, end_in_s=30)
    paused = await sandbox(engine, team, host, status="paused", end_in_s=-1)
    no_lifetime = await sandbox(engine, team, host)
    # Two replicas at once: each due row goes to exactly one of them.
    a, b = await asyncio.gather(sweeper.claim(engine, batch=4), sweeper.claim(engine, batch=4))
    got = [c.sb_uuid for c in a + b]
    assert len(got) == len(set(got)) and set(got) == due
    assert later not in got and paused not in got and no_lifetime not in got
    # Claimed rows carry the lease: not due again until it runs out.
    assert await sweeper.claim(engine) == []
    clock.advance(31)
    assert [c.sb_uuid for c in await sweeper.claim(engine)] == [later]
    clock.advance(sweeper.LEASE_S)
    again = {c.sb_uuid for c in await sweeper.claim(engine)}
    assert again == due | {later}


async def test_end_skips_a_sandbox_whose_lifetime_changed(engine: AsyncEngine, tmp_path: object) -> None:
    team, host = await team_and_host(engine)
    s = await sandbox(engine, team, host, end_in_s=-1)
    [claimed] = await sweeper.claim(engine)
    assert await _end_at(engine, s) == claimed.lease
    # A set_timeout after the claim wins: the sweeper leaves the sandbox alone (no agent call).
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(sandboxes).where(sandboxes.c.id == s).values(end_at=clock.now() + timedelta(hours=1))
        )
    report = sweeper.SweepReport()
    ca = CertificateAuthority.from_settings(Settings(home=tmp_path, jwt_secret="x" * 32))  # type: ignore[arg-type]
    pool = HostClientPool(ca)
    try:
        await sweeper.end(engine, pool, claimed, report)
    finally:
        await pool.close()
    assert report.skipped == [ids.sandbox_id(s)] and not report.killed and not report.failed
