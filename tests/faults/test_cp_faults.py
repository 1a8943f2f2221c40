"""Control-plane and database faults under a mixed load. Two replicas share one database and one
home (so one CA): ``warren cp`` as its own process (the one killed), with a 1 s monitor, and an
in-process one whose monitor the test drives (its pass is "one monitor pass"). Three real agents
on 127.0.0.76-78 heartbeat to the in-process one. The database is this module's own embedded
PostgreSQL, so restarting it disturbs no other test.

* ``kill -9`` of the CP process while creates are under way, then a restart: the clients got
  definite answers (refused or reset connections while it was down), the ``pending`` records
  the dead CP left name it as their replica, and one monitor pass settles them as soon as its
  lease has expired (the in-process replica's pending grace is an hour: only the lease rule
  can);
* a PostgreSQL restart: meanwhile both replicas answer 503 ``database_busy`` (not 500, never a
  hang), and both serve again afterwards without a restart of their own;
* two replicas racing: creates, destroys of the same sandboxes through both, and both monitors
  at once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.faults import invariants as inv
from tests.harness.agent import AgentProcess
from tests.harness.cp import CPProcess, InProcessCP
from tests.harness.machine import free_port, scratch_dir
from tests.harness.multihost import fleet, wait_for
from warren import clock, ids
from warren.cp.db import migrate
from warren.cp.db.embedded import EmbeddedPostgres
from warren.cp.hosts.monitor import HostMonitor

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root"),
    pytest.mark.timeout(300),
]

IPS = ("127.0.0.76", "127.0.0.77", "127.0.0.78")
# The process CP's settings: a monitor pass every second; a lease that expires a minute after
# its last renewal (the test moves the in-process clock past it, not waiting; on the real clock
# the restarted CP's own monitor does not see it expire while the test runs).
LEASE_TTL_S = 60
PROCESS_ENV = {
    "WARREN_MONITOR_INTERVAL_S": "1",
    "WARREN_DB_POOL_TIMEOUT_S": "5",
    "WARREN_REPLICA_LEASE_TTL_S": str(LEASE_TTL_S),
}


class FaultCP(CPProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), **PROCESS_ENV}


@dataclass
class Replicas:
    pg: EmbeddedPostgres
    cp: InProcessCP  # the test's replica: its monitor, its pool, its SQL
    proc: FaultCP
    proc_http: httpx.AsyncClient
    key: str
    agents: list[AgentProcess]

    @property
    def monitor(self) -> HostMonitor:
        monitor: HostMonitor = self.cp.app.state.monitor
        return monitor

    def loads(self) -> tuple[inv.Load, inv.Load]:
        """A load on each replica, sharing one record of answers and files."""
        a = inv.Load(self.proc_http, self.key)
        b = inv.Load(self.cp.http, self.key, answers=a.answers, acked=a.acked, created=a.created)
        return a, b

    async def one_pass(self) -> None:
        """One monitor pass of every host. A host whose lock the other replica's monitor holds
        (it passes every second) is skipped by a pass: the pass is run again for it."""
        left = {ids.host_id(a.host_uuid) for a in self.agents}

        async def every_host() -> bool:
            left.intersection_update((await self.monitor.run_once()).skipped_locked)
            return not left

        await wait_for(every_host, 30, "a monitor pass that reached every host")

    async def check(self, load: inv.Load, *, cp_down: bool = False) -> None:
        await inv.reachable(self.cp.pool, self.agents)
        await self.one_pass()
        await inv.all_hold(self.cp.sql, self.cp.pool, self.agents, load, cp_down=cp_down)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    d = scratch_dir("faults-pg")
    pg = EmbeddedPostgres(d / "home", port=free_port(), fast=True, max_connections=200)
    pg.start()
    try:
        migrate.upgrade(pg.url)
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
async def replicas(private_pg: EmbeddedPostgres) -> AsyncIterator[Replicas]:
    home = scratch_dir("faults-cp")
    # Its pending grace is an hour: a dead replica's creates can only settle by the lease rule.
    cp = await InProcessCP(private_pg.url, home, db_pool_timeout_s=5, pending_grace_s=3600).start()
    proc = FaultCP(private_pg.url, home)
    try:
        await asyncio.to_thread(proc.start)
        admin = await cp.signup(admin=True)
        key = await (await cp.signup()).api_key()
        async with fleet(cp, "faults-cp") as f, httpx.AsyncClient(base_url=proc.url, timeout=120) as http:
            # At once (each its own data dir by name), then in address order.
            await asyncio.gather(*(f.add(admin, ip, name=ip) for ip in IPS))
            f.agents.sort(key=lambda a: a.ip)
            yield Replicas(private_pg, cp, proc, http, key, f.agents)
    finally:
        await asyncio.to_thread(proc.stop)
        await cp.stop()
        clock.reset()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def clean(replicas: Replicas) -> AsyncIterator[Replicas]:
    yield replicas
    await inv.destroy_everything(replicas.cp.sql, replicas.cp.pool, replicas.agents)


async def test_cp_killed_mid_create(clean: Replicas) -> None:
    r = clean
    load, _ = r.loads()
    await load.run(workers=3, rounds=1)
    creates = [asyncio.create_task(load.create()) for _ in range(6)]

    async def pending() -> bool:
        return bool(await r.cp.sql("SELECT 1 FROM sandboxes WHERE status = 'pending'"))

    await wait_for(pending, 30, "creates under way")
    assert r.proc.proc is not None
    dead = await r.cp.sql("SELECT id FROM replica_leases WHERE pid = :p", p=r.proc.proc.pid)
    r.proc.proc.kill()  # SIGKILL
    r.proc.proc.wait()
    await asyncio.gather(*creates)
    await asyncio.to_thread(r.proc.start)
    await load.run(workers=3, rounds=1)  # the restarted CP serves
    # Its rows name the dead replica (the lease it took at start, by its pid).
    assert len(dead) == 1
    owned = await r.cp.sql("SELECT count(*) FROM sandboxes WHERE replica_id = :d", d=dead[0][0])
    assert owned[0][0] >= 1
    # Once its lease has expired (the CP's clock moved, not waited for; still short of the
    # heartbeat staleness), one pass settles each: on its host → running, not there → error.
    clock.advance(LEASE_TTL_S + 1)
    try:
        await r.check(load, cp_down=True)
        left = await r.cp.sql("SELECT id FROM sandboxes WHERE status = 'pending'")
        assert left == []
    finally:
        clock.advance(-(LEASE_TTL_S + 1))


async def test_postgres_restart(clean: Replicas) -> None:
    r = clean
    a, b = r.loads()
    kept = await a.run(workers=2, rounds=1)
    await asyncio.to_thread(r.pg.stop)
    try:
        # Meanwhile both replicas answer at once and say why.
        for load in (a, b):
            got = await load.call("list", "GET", "/v1/sandboxes")
            assert got is not None and got.status_code == 503, got and got.text
            assert got.json()["error"]["code"] == "database_busy"
            await load.exec(kept[0])
    finally:
        await asyncio.to_thread(r.pg.start)

    async def serving() -> bool:
        for load in (a, b):
            got = await load.http.get("/v1/sandboxes", headers={"X-API-Key": r.key})
            if got.status_code != 200:
                return False
        return True

    await wait_for(serving, 30, "both replicas serving again")
    await asyncio.gather(a.run(workers=2, rounds=1), b.run(workers=2, rounds=1))
    await r.check(a)


async def test_replicas_race(clean: Replicas) -> None:
    r = clean
    a, b = r.loads()
    kept = (await asyncio.gather(a.run(workers=2, rounds=2), b.run(workers=2, rounds=2)))[0]
    # The same sandboxes destroyed through both replicas at once, while both monitors pass.
    await asyncio.gather(
        *(a.destroy(sb) for sb in kept),
        *(b.destroy(sb) for sb in kept),
        r.monitor.run_once(),
        r.monitor.run_once(),
    )
    assert a.successes("destroy") >= len(kept)
    await r.check(a)
