"""A host short of disk gets no new sandboxes (issue 18): the heartbeat stores what the agent
reports (``HostReport.disk_free_bytes``), and the scheduler skips a host below the threshold
from then on, saying so when no host is left."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.hosts.scheduler import RoundRobinScheduler
from warren.cp.services.host_link import HostReport, heartbeat
from warren.errors import InvalidRequest, ServiceUnavailable

from .conftest import Rows

MIN_MB = 1024


async def _beat(engine: AsyncEngine, host: uuid.UUID, free_mb: int) -> None:
    await heartbeat(engine, host, ids.host_id(host), HostReport(disk_free_bytes=free_mb << 20))


async def _picks(engine: AsyncEngine, s: RoundRobinScheduler, team: uuid.UUID, n: int = 6) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return {(await s.select_host(conn, team, False))["id"] for _ in range(n)}


async def test_a_host_below_the_threshold_is_skipped_from_its_next_heartbeat(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    full, roomy, silent = [await rows.host(admin, created_offset_s=i) for i in range(3)]
    s = RoundRobinScheduler(min_free_disk_mb=MIN_MB)
    assert await _picks(engine, s, team) == {full, roomy, silent}  # nothing reported yet
    await _beat(engine, full, MIN_MB - 1)
    await _beat(engine, roomy, MIN_MB)
    # `silent` never reported (an older agent): still eligible.
    assert await _picks(engine, s, team) == {roomy, silent}
    await _beat(engine, full, 50_000)  # space freed: back at its next heartbeat
    assert await _picks(engine, s, team) == {full, roomy, silent}
    # The check off: a full host is chosen like any other.
    await _beat(engine, full, 0)
    assert await _picks(engine, RoundRobinScheduler(), team) == {full, roomy, silent}


async def test_every_host_short_of_disk_is_503_saying_so(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    hosts = [await rows.host(admin, created_offset_s=i) for i in range(2)]
    for h in hosts:
        await _beat(engine, h, 0)  # 0: the agent cannot write its data directory
    with pytest.raises(ServiceUnavailable) as e:
        await _picks(engine, RoundRobinScheduler(min_free_disk_mb=MIN_MB), team, 1)
    assert e.value.code == "no_capacity" and "free disk" in str(e.value) and "1024 MiB" in str(e.value)


def test_the_report_is_bounded() -> None:
    assert HostReport(disk_free_bytes=2**63 - 1).disk_free_bytes == 2**63 - 1
    for bad in (-1, 2**63, "12"):
        with pytest.raises((InvalidRequest, ValueError)):
            HostReport.model_validate({"disk_free_bytes": bad})
