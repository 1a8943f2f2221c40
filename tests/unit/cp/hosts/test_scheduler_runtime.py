"""The scheduler places a sandbox only on a host offering its runtime (issue 16): what a host
offers is what its heartbeat reported (``HostReport.runtimes``, stored in ``hosts.runtimes``;
runc until it says), and with no such host the answer is 503 ``no_hosts_available`` naming the
runtime."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.tables import hosts
from warren.cp.hosts.scheduler import Placement, RoundRobinScheduler, pool_ready, runtime_on
from warren.cp.services.host_link import HostReport, heartbeat
from warren.errors import ServiceUnavailable

from .conftest import Rows


async def _offer(engine: AsyncEngine, host: uuid.UUID, *runtimes: str) -> None:
    await heartbeat(engine, host, ids.host_id(host), HostReport.model_validate({"runtimes": list(runtimes)}))


async def _picks(
    engine: AsyncEngine, s: RoundRobinScheduler, team: uuid.UUID, runtime: str, byoc: bool = False
) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return {(await s.select_host(conn, team, byoc, Placement(runtime=runtime)))["id"] for _ in range(6)}


async def test_only_hosts_offering_the_runtime_are_picked(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    plain, both, only_gvisor = [await rows.host(admin, created_offset_s=i) for i in range(3)]
    s = RoundRobinScheduler()
    # Nothing reported yet: every host runs runc, none gvisor.
    assert await _picks(engine, s, team, "runc") == {plain, both, only_gvisor}
    with pytest.raises(ServiceUnavailable):
        await _picks(engine, s, team, "gvisor")
    await _offer(engine, both, "runc", "gvisor")
    await _offer(engine, only_gvisor, "gvisor")
    assert await _picks(engine, s, team, "gvisor") == {both, only_gvisor}
    assert await _picks(engine, s, team, "runc") == {plain, both}
    # No runtime named (template builds, creates under WARREN_DEFAULT_RUNTIME=host): any host,
    # each running it on its own default.
    async with engine.connect() as conn:
        assert {(await s.select_host(conn, team, False))["id"] for _ in range(6)} == {
            plain,
            both,
            only_gvisor,
        }
    # What a host offers follows its reports: it stops offering gvisor, it gets none.
    await _offer(engine, both, "runc", "crun")
    assert await _picks(engine, s, team, "gvisor") == {only_gvisor}
    assert await _picks(engine, s, team, "crun") == {both}


async def test_no_host_offering_it_is_503_naming_the_runtime(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team, byoc = await rows.team(), await rows.team(byoc=True)
    await _offer(engine, await rows.host(admin), "runc", "crun")
    await rows.host(admin, type="byoc", team_id=byoc)
    s = RoundRobinScheduler()
    with pytest.raises(ServiceUnavailable) as e:
        await _picks(engine, s, team, "gvisor")
    assert e.value.code == "no_hosts_available"
    assert e.value.message == (
        "no online platform hosts available with the gvisor runtime (the online ones offer runc, crun)"
    )
    with pytest.raises(ServiceUnavailable) as e:
        await _picks(engine, s, byoc, "gvisor", byoc=True)
    assert e.value.code == "no_hosts_available"
    assert "BYOC" in e.value.message and "gvisor runtime" in e.value.message
    # No eligible host at all still names what was asked.
    with pytest.raises(ServiceUnavailable) as e:
        await _picks(engine, s, await rows.team(byoc=True), "runc", byoc=True)
    assert e.value.message == "no online BYOC hosts available for team with the runc runtime"


async def test_a_report_without_runtimes_keeps_what_the_host_offered(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    await _offer(engine, h, "gvisor", "runc", "gvisor")
    await heartbeat(engine, h, ids.host_id(h), HostReport())
    await heartbeat(engine, h, ids.host_id(h), None)
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(hosts.c.runtimes).where(hosts.c.id == h))).scalar()
    assert stored == ["runc", "gvisor"]  # each once, in the platform's order
    assert await _picks(engine, RoundRobinScheduler(), team, "gvisor") == {h}


async def test_pools_are_matched_by_template_and_runtime(engine: AsyncEngine, rows: Rows) -> None:
    """Issue 17, session 13: a pool's name is its template, with ``@runtime`` when it is not the
    host's default's. A create naming no runtime runs on its host's default and prefers a host
    with a ready pool of that; one naming a runtime, a pool of that runtime."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    crun_host, runc_host, legacy = [await rows.host(admin, created_offset_s=i) for i in range(3)]
    for h, default, pools in (
        (crun_host, "crun", [{"template": "minimal", "target": 4, "ready": 4}]),
        (runc_host, "runc", [{"template": "minimal@crun", "target": 4, "ready": 4}]),
    ):
        report = {"runtimes": ["runc", "crun"], "default_runtime": default, "warm_pools": pools}
        await heartbeat(engine, h, ids.host_id(h), HostReport.model_validate(report))
    await _offer(engine, legacy, "runc", "crun")  # never says its default: runc
    s = RoundRobinScheduler()

    async def pick(runtime: str) -> tuple[object, str]:
        async with engine.connect() as conn:
            want = Placement(template="minimal", runtime=runtime)
            h = await s.select_host(conn, team, False, want)
            return h["id"], runtime_on(h, runtime)

    # No runtime named: the crun host's default pool (crun); the runc host's crun pool is not
    # its default's, so it does not count.
    assert [await pick("") for _ in range(4)] == [(crun_host, "crun")] * 4
    # crun named: both hosts' crun pools (4 left on the runc host).
    assert {await pick("crun") for _ in range(4)} == {(runc_host, "crun")}
    # runc named: no pool anywhere, the rotation over every host.
    assert {(await pick("runc"))[0] for _ in range(6)} == {crun_host, runc_host, legacy}
    # Pools spoken for: a create naming none runs on whichever host's default.
    got = {await pick("") for _ in range(6)}
    assert got == {(crun_host, "crun"), (runc_host, "runc"), (legacy, "runc")}
    assert pool_ready({"warm_pools": [{"template": "minimal@runc", "ready": 2}]}, "minimal", "") == 2
    assert pool_ready({"warm_pools": [{"template": "minimal", "ready": 2}]}, "minimal", "crun") == 0
    both = [{"template": "minimal", "ready": 1}, {"template": "minimal@crun", "ready": 2}]
    assert pool_ready({"default_runtime": "crun", "warm_pools": both}, "minimal", "crun") == 3
