"""Several real ``warren agent`` processes registered to one in-process control plane
(:class:`~tests.harness.cp.InProcessCP`, so a test can move its clock, drive its monitor and
read its pool and store), each through the API with a host's one-time token: :func:`fleet`
starts and removes them, :class:`MultiHost` is what a multi-host test calls on them, and
:func:`wait_for` polls for what the cluster does in the background."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP, User
from tests.harness.machine import scratch_dir
from warren import ids
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.store import LayerStore
from warren.rpc import hostagent_pb2 as pb


async def wait_for(pred: Callable[[], Awaitable[bool]], timeout: float = 30, what: str = "condition") -> None:
    """Poll ``pred`` every 0.1 s until it holds; an AssertionError naming ``what`` after ``timeout`` s."""
    for _ in range(int(timeout * 10)):
        if await pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Fleet:
    """The agents registered to ``cp`` so far, their data dirs under ``root``."""

    cp: InProcessCP
    root: Path
    agents: list[AgentProcess] = field(default_factory=list)

    async def add(
        self, owner: User, ip: str, type: str = "regular", team_id: str | None = None, *, name: str = ""
    ) -> AgentProcess:
        """A host made by ``owner`` (a platform admin for a regular host) and a real agent on
        ``ip`` registered as it, its data in ``root / name`` (default ``agent<N>``)."""
        host_id, token = await owner.create_host(type, team_id)
        data_dir = self.root / (name or f"agent{len(self.agents)}")
        agent = await AgentProcess.registered(ip, data_dir, self.cp.url).astart(token)
        self.agents.append(agent)
        assert agent.host_id == host_id
        return agent


@contextlib.asynccontextmanager
async def fleet(cp: InProcessCP, suite: str) -> AsyncIterator[Fleet]:
    """An empty fleet in a fresh scratch dir; on the way out every sandbox on its agents is
    destroyed (over the CP's mTLS pool, their only clients), the agents are stopped and the
    dir removed."""
    f = Fleet(cp, scratch_dir(suite))
    try:
        yield f
    finally:
        pool: HostClientPool = cp.app.state.pool
        await asyncio.gather(*(a.destroy_all_over(pool) for a in f.agents))
        await asyncio.gather(*(a.astop() for a in f.agents))
        shutil.rmtree(f.root, ignore_errors=True)


@dataclass
class MultiHost:
    """The control plane, a user (``key``: an API key of its team) and the agents."""

    cp: InProcessCP
    user: User
    key: str
    agents: list[AgentProcess]

    @property
    def pool(self) -> HostClientPool:
        pool: HostClientPool = self.cp.app.state.pool
        return pool

    @property
    def store(self) -> LayerStore:
        store: LayerStore = self.cp.app.state.store
        return store

    def client(self, agent: AgentProcess) -> HostClient:
        """The CP's own mTLS client of the agent."""
        return self.pool.get_for(agent.host_uuid, agent.address)

    async def api(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        return await self.cp.http.request(method, path, headers={"X-API-Key": key or self.key}, **kw)

    async def sh(self, sb: str, script: str) -> str:
        """The stdout of ``script`` run in the sandbox, which must exit 0."""
        r = await self.api(
            "POST", f"/v1/sandboxes/{sb}/exec", json={"cmd": "/bin/sh", "args": ["-c", script]}
        )
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        return str(r.json()["stdout"])

    async def destroy(self, *sandboxes: str) -> None:
        for sb in sandboxes:
            assert (await self.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204

    async def agent_of(self, sb: str) -> AgentProcess:
        """The agent the sandbox's row places it on."""
        rows = await self.cp.sql(
            "SELECT host_id FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, sb)
        )
        return next(a for a in self.agents if a.host_uuid == rows[0][0])

    async def held(self, agent: AgentProcess) -> dict[str, bool]:
        """What the agent says it holds: layer digest → in use by a sandbox."""
        resp = await self.client(agent).stub.ListLayers(pb.ListLayersRequest(), timeout=30)
        return {x.digest: x.in_use for x in resp.layers}

    async def recorded(self, agent: AgentProcess) -> set[str]:
        """What ``host_layers`` says the agent holds."""
        rows = await self.cp.sql("SELECT digest FROM host_layers WHERE host_id = :h", h=agent.host_uuid)
        return {r[0] for r in rows}
