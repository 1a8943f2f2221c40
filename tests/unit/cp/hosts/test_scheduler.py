"""RoundRobinScheduler against a real database: eligibility, pools, per-pool rotation, 503."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.db.tables import hosts
from warren.cp.hosts.scheduler import Placement, RoundRobinScheduler
from warren.errors import ServiceUnavailable

from .conftest import Rows


async def _pick(engine: AsyncEngine, s: RoundRobinScheduler, team, byoc: bool = False):  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await s.select_host(conn, team, byoc))["id"]


async def test_round_robin_spreads_evenly_in_age_order(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    hs = [await rows.host(admin, created_offset_s=i) for i in range(3)]
    s = RoundRobinScheduler()
    picks = [await _pick(engine, s, team) for _ in range(9)]
    assert picks == hs * 3
    assert Counter(picks) == {h: 3 for h in hs}


async def test_only_online_hosts_with_an_address_are_eligible(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    good = await rows.host(admin)
    await rows.host(admin, status="pending")
    await rows.host(admin, status="unreachable")
    await rows.host(admin, address="")
    s = RoundRobinScheduler()
    assert {await _pick(engine, s, team) for _ in range(4)} == {good}


async def test_byoc_team_uses_only_its_own_hosts_and_never_falls_back(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    byoc, other_byoc, plain = await rows.team(byoc=True), await rows.team(byoc=True), await rows.team()
    platform = await rows.host(admin)
    mine = await rows.host(admin, type="byoc", team_id=byoc)
    theirs = await rows.host(admin, type="byoc", team_id=other_byoc)
    s = RoundRobinScheduler()
    assert {await _pick(engine, s, byoc, True) for _ in range(3)} == {mine}
    assert {await _pick(engine, s, plain) for _ in range(3)} == {platform}
    assert {await _pick(engine, s, other_byoc, True) for _ in range(3)} == {theirs}


async def test_no_eligible_host_is_503_no_hosts_available(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    byoc = await rows.team(byoc=True)
    await rows.host(admin)  # a platform host exists but a BYOC team must not use it
    await rows.host(admin, type="byoc", team_id=byoc, status="unreachable")
    with pytest.raises(ServiceUnavailable) as e:
        await _pick(engine, RoundRobinScheduler(), byoc, True)
    assert e.value.code == "no_hosts_available"


async def test_counters_are_per_pool(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    plain, byoc = await rows.team(), await rows.team(byoc=True)
    p = [await rows.host(admin, created_offset_s=i) for i in range(2)]
    b = [await rows.host(admin, type="byoc", team_id=byoc, created_offset_s=i) for i in range(2)]
    s = RoundRobinScheduler()
    got = []
    for _ in range(2):
        got.append(await _pick(engine, s, plain))
        got.append(await _pick(engine, s, byoc, True))
    # Interleaving a BYOC team's requests does not skew the platform rotation.
    assert got == [p[0], b[0], p[1], b[1]]


async def test_snapshot_host_affinity_picks_only_the_host_holding_the_files(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    hs = [await rows.host(admin, created_offset_s=i) for i in range(3)]
    down = await rows.host(admin, status="unreachable")
    s = RoundRobinScheduler()
    async with engine.connect() as conn:
        picks = {
            (await s.select_host(conn, team, False, Placement(required_host=hs[1])))["id"] for _ in range(4)
        }
        assert picks == {hs[1]}
        with pytest.raises(ServiceUnavailable) as e:
            await s.select_host(conn, team, False, Placement(required_host=down))
    assert e.value.code == "snapshot_host_unavailable"


async def test_a_template_of_layers_goes_where_most_of_its_bytes_are(engine: AsyncEngine, rows: Rows) -> None:
    """Among hosts with room, the ones holding most of the chain's bytes (host_layers) win and
    rotate among themselves; each candidate says which layers it lacks, in chain order."""
    import hashlib

    import sqlalchemy as sa

    from warren.cp.hosts.scheduler import Overcommit, Reservation
    from warren.cp.services import layers as layer_svc
    from warren.layers import LayerMeta

    admin = await rows.user(admin=True)
    team = await rows.team()
    hs = [await rows.host(admin, created_offset_s=i) for i in range(4)]
    small, big = (hashlib.sha256(b"%d" % i).hexdigest() for i in range(2))
    await layer_svc.record_layer(engine, LayerMeta(small, 10))
    await layer_svc.record_layer(engine, LayerMeta(big, 1000))
    await layer_svc.record_on_host(engine, hs[0], [small])
    await layer_svc.record_on_host(engine, hs[1], [big])
    await layer_svc.record_on_host(engine, hs[2], [big])
    s = RoundRobinScheduler()
    async with engine.connect() as conn:
        picked = [await s.select_host(conn, team, False, Placement(layers=[small, big])) for _ in range(4)]
        assert [h["id"] for h in picked] == [hs[1], hs[2], hs[1], hs[2]]
        assert list(picked[0]["missing"]) == [small]
        # Room comes first: a full host is passed over however much it holds.
        await conn.execute(sa.text("UPDATE hosts SET cpu_cores = 2, memory_mb = 4096"))
        await conn.commit()
        await rows.sandbox(team, hs[1], vcpus=10_000)
        await rows.sandbox(team, hs[2], vcpus=10_000)
        need = Reservation(1, 1, Overcommit())
        h = await s.select_host(conn, team, False, Placement(need=need, layers=[small, big]))
        assert (h["id"], list(h["missing"])) == (hs[0], [big])
        # Nobody holds any of it: plain rotation among those with room, every layer missing.
        other = hashlib.sha256(b"none").hexdigest()
        got = [await s.select_host(conn, team, False, Placement(need=need, layers=[other])) for _ in range(4)]
        assert {h["id"] for h in got} == {hs[0], hs[3]}
        assert all(list(h["missing"]) == [other] for h in got)


async def test_hosts_with_ready_pooled_sandboxes_first(engine: AsyncEngine, rows: Rows) -> None:
    """Warm pools (issue 17): the host that reported ready members of the template is chosen
    while this process has sent it fewer creates than it reported ready; then the rotation
    resumes, and a new report (a newer heartbeat) counts afresh."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    cold, warm = [await rows.host(admin, created_offset_s=i) for i in range(2)]
    report = [{"template": "minimal", "target": 4, "ready": 2}, {"template": "py", "target": 1, "ready": 1}]
    async with engine.begin() as conn:
        await conn.execute(hosts.update().where(hosts.c.id == warm).values(warm_pools=report))
    s = RoundRobinScheduler()

    async def pick(template: str) -> object:
        async with engine.connect() as conn:
            return (await s.select_host(conn, team, False, Placement(template=template)))["id"]

    assert [await pick("minimal") for _ in range(2)] == [warm, warm]
    # Both reported members are spoken for: round robin over both hosts again.
    assert {await pick("minimal") for _ in range(4)} == {cold, warm}
    assert await pick("py") == warm  # another template's pool counts on its own
    assert await pick("other") in (cold, warm)
    later = clock.now() + timedelta(seconds=1)
    async with engine.begin() as conn:  # the next heartbeat: 2 ready again
        await conn.execute(hosts.update().where(hosts.c.id == warm).values(last_heartbeat_at=later))
    assert [await pick("minimal") for _ in range(2)] == [warm, warm]
