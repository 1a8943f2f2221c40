"""A sandbox whose host is lost (``missing``: its host stopped beating) is still its team's to
end: a DELETE answers 204 at once and frees its quota slot, its lifetime still ends it (with
``on_end`` kill; one to pause waits for its host), and when the host comes back the monitor
destroys there every sandbox whose record ended meanwhile.

ONE control plane in this process (the test moves its clock and runs its monitor and its
lifetime sweeper; neither runs on its own) and one real agent, stopped (a plain stop keeps its
sandboxes, as a production agent restart does) to lose the host, started again for it to return.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP, User
from tests.harness.multihost import fleet, wait_for
from warren import clock, ids
from warren.cp.hosts.monitor import HostMonitor, PassResult
from warren.cp.services import e2b_sandboxes
from warren.cp.services.context import AuthContext
from warren.cp.services.lifetime_sweeper import sweep_once
from warren.errors import WarrenError
from warren.rpc import hostagent_pb2 as pb

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root (namespaces, cgroups, overlayfs)"),
]

AGENT_IP = "127.0.0.91"
STALE_S = 91  # past the monitor's 90 s without a heartbeat


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    # The lifetime sweeper runs only when a test runs it, as the monitor does (InProcessCP).
    home = Path(tmp_path_factory.mktemp("cp-home"))
    try:
        async with InProcessCP(db_url, home, lifetime_sweep_interval_s=3600) as server:
            yield server
    finally:
        clock.reset()


@dataclass
class World:
    cp: InProcessCP
    admin: User
    user: User
    key: str
    agent: AgentProcess

    @property
    def monitor(self) -> HostMonitor:
        monitor: HostMonitor = self.cp.app.state.monitor
        return monitor

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        return await self.cp.http.request(method, path, headers={"X-API-Key": self.key}, **kw)

    async def create(self) -> str:
        r = await self.api("POST", "/v1/sandboxes", json={"template": "minimal"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def get(self, sb: str) -> dict[str, Any]:
        r = await self.api("GET", f"/v1/sandboxes/{sb}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def in_use(self) -> int:
        r = await self.api("GET", f"/v1/teams/{self.user.team_id}/quotas")
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["sandboxes"])

    async def on_host(self) -> set[str]:
        client = self.cp.pool.get_for(self.agent.host_uuid, self.agent.address)
        resp = await client.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=10)
        return {s.sandbox_id for s in resp.sandboxes}

    async def lose_host(self) -> None:
        """The agent stops; past the heartbeat window the monitor marks the host unreachable
        and its sandboxes missing."""
        await self.agent.astop()
        clock.advance(STALE_S)
        result = await self.monitor.run_once()
        assert result.marked_down == [self.agent.host_id], result

    @property
    def agent_up(self) -> bool:
        return self.agent.proc is not None and self.agent.proc.poll() is None

    async def host_returns(self) -> PassResult:
        """The agent starts again and beats; the first monitor pass that reaches it."""
        await self.agent.astart()

        async def online() -> bool:
            r = await self.admin.req("GET", f"/v1/hosts/{self.agent.host_id}")
            return bool(r.json()["status"] == "online")

        await wait_for(online, 60, "the host online again")

        async def reached() -> bool:  # the CP's channel reconnects after a backoff
            try:
                await self.on_host()
            except WarrenError:
                return False
            return True

        await wait_for(reached, 60, "the agent reachable again")
        clock.advance(1)  # the pass judges records written before it asks the host
        return await self.monitor.run_once()


@pytest.fixture(scope="module")
async def world(cp: InProcessCP) -> AsyncIterator[World]:
    admin = await cp.signup(admin=True)
    user = await cp.signup()
    async with fleet(cp, "missing-sandboxes") as f:
        agent = await f.add(admin, AGENT_IP)
        yield World(cp, admin, user, await user.api_key(), agent)


@pytest.fixture
async def w(world: World) -> AsyncIterator[World]:
    yield world
    if not world.agent_up:  # a test that failed while its host was away: the next one needs it
        await world.host_returns()


async def test_a_missing_sandbox_is_deleted_at_once_and_destroyed_when_its_host_returns(w: World) -> None:
    base = await w.in_use()  # 0, unless a test before failed
    sb, by_e2b, kept = await w.create(), await w.create(), await w.create()
    assert await w.in_use() == base + 3
    await w.lose_host()
    assert [(await w.get(s))["status"] for s in (sb, by_e2b, kept)] == ["missing"] * 3
    assert await w.in_use() == base + 3  # a missing sandbox holds its slot: it may come back

    # Its host cannot answer: the delete does not ask it, and frees the slot.
    r = await w.api("DELETE", f"/v1/sandboxes/{sb}")
    assert r.status_code == 204, r.text
    got = await w.get(sb)
    assert (got["status"], got.get("end_reason")) == ("stopped", "deleted")
    assert await w.in_use() == base + 2
    assert (await w.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204  # again: as ever
    # E2B's kill is the same destroy (True once, then a 404: False).
    team = AuthContext(kind="session", team_id=ids.parse_id(ids.Kind.TEAM, w.user.team_id))
    await e2b_sandboxes.kill(w.cp.engine, w.cp.pool, team, by_e2b)
    got = await w.get(by_e2b)
    assert (got["status"], got.get("end_reason")) == ("stopped", "deleted")
    assert await w.in_use() == base + 1

    # The host comes back still running them: the ended ones go, the other runs on.
    result = await w.host_returns()
    assert sorted(result.destroyed) == sorted([sb, by_e2b]), result
    assert result.to_running == [kept], result
    assert await w.on_host() == {kept}
    assert (await w.get(sb))["end_reason"] == "deleted"
    assert (await w.get(kept))["status"] == "running"
    assert (await w.api("DELETE", f"/v1/sandboxes/{kept}")).status_code == 204
    assert await w.in_use() == base


async def test_a_missing_sandbox_s_lifetime_still_ends_it(w: World) -> None:
    """``on_end`` kill: stopped with ``lifetime_ended`` while its host is away, destroyed there
    when it returns. ``on_end`` pause: a pause needs its host, so it stays missing, and is
    paused once its host brings it back."""
    base = await w.in_use()  # 0, unless a test before failed
    killed, paused = await w.create(), await w.create()
    end_at = clock.now() + timedelta(seconds=30)  # passes while the host is away
    for sb, on_end in ((killed, "kill"), (paused, "pause")):
        await w.cp.sql(
            "UPDATE sandboxes SET end_at = :end_at, on_end = :on_end WHERE id = :id",
            end_at=end_at, on_end=on_end, id=ids.parse_id(ids.Kind.SANDBOX, sb),
        )  # fmt: skip
    await w.lose_host()
    assert await w.in_use() == base + 2

    report = await sweep_once(w.cp.engine, w.cp.pool)
    assert (report.killed, report.paused, report.failed) == ([killed], [], []), report
    got = await w.get(killed)
    assert (got["status"], got.get("end_reason")) == ("stopped", "lifetime_ended")
    assert (await w.get(paused))["status"] == "missing"
    assert await w.in_use() == base + 1
    again = await sweep_once(w.cp.engine, w.cp.pool)
    assert (again.killed, again.paused, again.skipped, again.failed) == ([], [], [], []), again

    result = await w.host_returns()
    mine = {killed, paused}  # (a test before that failed may have left others)
    assert [s for s in result.destroyed if s in mine] == [killed], result
    assert [s for s in result.to_running if s in mine] == [paused], result
    report = await sweep_once(w.cp.engine, w.cp.pool)
    assert (report.killed, report.paused) == ([], [paused]), report
    assert (await w.get(paused))["status"] == "paused"
    assert await w.on_host() & mine == {paused}
    assert (await w.api("DELETE", f"/v1/sandboxes/{paused}")).status_code == 204
