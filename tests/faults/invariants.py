"""What must hold after a fault (issue 18 item 6), and the short mixed load that runs around it.

:class:`Load` drives creates, execs, file writes and reads, and destroys through the REST API,
each call bounded (a call that outlives its bound is a *hang*), and remembers what the platform
acknowledged: every answer, and every file write that got its 204.

The checks, after one monitor pass:

* :func:`records_match_hosts`: no sandbox runs without a record (each agent's ListSandboxes
  against the rows), and no record claims a sandbox that does not run;
* :func:`files_kept`: every acknowledged write of a sandbox still running reads back the same;
* :func:`credentials_whole`: each agent's saved certificate is the one the CP recorded, and the
  CP reaches it over mTLS with it (no half-rotated credential);
* :meth:`Load.definite`: every client got a definite answer: a success, an error status with
  the error envelope, or a refused/reset connection (the CP was down), never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.harness.agent import AgentProcess
from tests.harness.multihost import wait_for
from warren import ids
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.security.ca import fingerprint_pem
from warren.errors import WarrenError
from warren.rpc import hostagent_pb2 as pb

# No single call of the load may take longer: past it, the client was left hanging.
CALL_BOUND_S = 60.0
# Statuses that mean "the sandbox is alive".
LIVE = ("running", "paused")
# Statuses under which a record says its sandbox exists on its host.
CLAIMS = ("running", "paused", "pending", "starting")

Sql = Callable[..., Awaitable[Any]]


@dataclass
class Answer:
    op: str
    status: int | None  # None: no HTTP answer (connection refused or reset)
    detail: str = ""


@dataclass
class Load:
    """The mixed load against one API (``http`` with ``key``); several may share ``answers``."""

    http: httpx.AsyncClient
    key: str
    answers: list[Answer] = field(default_factory=list)
    acked: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sandbox → path → bytes
    created: list[str] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    async def call(self, op: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        """One bounded API call; its answer recorded."""
        headers = {"X-API-Key": self.key, **kw.pop("headers", {})}
        try:
            async with asyncio.timeout(CALL_BOUND_S):
                r = await self.http.request(method, path, headers=headers, **kw)
        except TimeoutError:
            self.answers.append(Answer(op, None, "hang"))
            return None
        except httpx.TransportError as e:
            self.answers.append(Answer(op, None, f"transport: {type(e).__name__}"))
            return None
        detail = ""
        if r.status_code >= 400:
            try:
                detail = str(r.json()["error"]["code"])
            except (ValueError, KeyError, TypeError):
                detail = f"no error envelope: {r.text[:200]}"
        self.answers.append(Answer(op, r.status_code, detail))
        return r

    async def create(self) -> str | None:
        r = await self.call("create", "POST", "/v1/sandboxes", json={"template": "minimal"})
        if r is None or r.status_code != 201:
            return None
        sb = str(r.json()["id"])
        self.created.append(sb)
        return sb

    async def write(self, sb: str, size: int = 1024) -> None:
        n = next(self._seq)
        path, data = f"/tmp/f{n}", bytes([n % 251]) * size
        files = {"file": ("f", data, "application/octet-stream")}
        r = await self.call(
            "write", "POST", f"/v1/sandboxes/{sb}/files/write", data={"path": path}, files=files
        )
        if r is not None and r.status_code == 204:
            self.acked.setdefault(sb, {})[path] = data

    async def exec(self, sb: str) -> None:
        body = {"cmd": "/bin/sh", "args": ["-c", "echo ok"]}
        await self.call("exec", "POST", f"/v1/sandboxes/{sb}/exec", json=body)

    async def destroy(self, sb: str) -> None:
        await self.call("destroy", "DELETE", f"/v1/sandboxes/{sb}")

    async def round(self, keep: bool) -> str | None:
        """Create, exec, write twice; destroy unless ``keep``."""
        sb = await self.create()
        if sb is None:
            return None
        await self.exec(sb)
        await self.write(sb)
        await self.write(sb)
        if not keep:
            await self.destroy(sb)
            return None
        return sb

    async def run(self, workers: int = 3, rounds: int = 2) -> list[str]:
        """``workers`` concurrent loops of ``rounds`` rounds; every other sandbox is kept.
        Returns the kept ones."""

        async def worker(w: int) -> list[str]:
            kept = []
            for i in range(rounds):
                if sb := await self.round(keep=(w + i) % 2 == 0):
                    kept.append(sb)
            return kept

        return [sb for kept in await asyncio.gather(*(worker(w) for w in range(workers))) for sb in kept]

    def definite(self, *, cp_down: bool = False) -> None:
        """Every call got a definite answer: never a hang, every error with its envelope; no
        dropped connection unless the CP itself was down (``cp_down``)."""
        bad = [
            a
            for a in self.answers
            if a.detail == "hang"
            or a.detail.startswith("no error envelope")
            or (a.detail.startswith("transport") and not cp_down)
        ]
        assert not bad, bad
        # 500 is a bug, not an answer: a fault must map to 502/503 (or 4xx).
        assert not [a for a in self.answers if a.status == 500], self.answers

    def successes(self, op: str) -> int:
        return sum(1 for a in self.answers if a.op == op and a.status is not None and a.status < 300)


async def listed(pool: HostClientPool, agent: AgentProcess) -> dict[str, str]:
    client = pool.get_for(agent.host_uuid, agent.address)
    resp = await client.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=10)
    return {s.sandbox_id: s.status for s in resp.sandboxes}


async def reachable(pool: HostClientPool, agents: Sequence[AgentProcess], timeout: float = 30) -> None:
    """Until the CP's client of each agent connects again (a restarted agent: the channel
    reconnects after a backoff of up to 5 s)."""

    async def ok() -> bool:
        try:
            for agent in agents:
                await listed(pool, agent)
        except WarrenError:
            return False
        return True

    await wait_for(ok, timeout, "the agents reachable")


async def records_match_hosts(sql: Sql, pool: HostClientPool, agents: Sequence[AgentProcess]) -> None:
    """No sandbox runs without a live record on its host; no record claims a sandbox its host
    does not run."""
    rows = await sql("SELECT id, host_id, status FROM sandboxes")
    by_id = {ids.sandbox_id(r[0]): (r[1], r[2]) for r in rows}
    for agent in agents:
        on_host = await listed(pool, agent)
        for sb in on_host:
            host, status = by_id.get(sb, (None, "no record"))
            assert host == agent.host_uuid and status in LIVE, f"{sb} runs on {agent.ip}; record: {status}"
        for sb, (host, status) in by_id.items():
            if host == agent.host_uuid and status in CLAIMS:
                assert sb in on_host, f"{sb} is {status} on {agent.ip}, which does not run it"


async def files_kept(sql: Sql, load: Load) -> None:
    """Every acknowledged write of a sandbox still running reads back as written."""
    for sb, written in load.acked.items():
        rows = await sql("SELECT status FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, sb))
        if rows[0][0] != "running":
            continue
        for path, data in written.items():
            r = await load.http.post(
                f"/v1/sandboxes/{sb}/files/read", json={"path": path}, headers={"X-API-Key": load.key}
            )
            assert r.status_code == 200 and r.content == data, f"{sb}:{path} lost ({r.status_code})"


async def credentials_whole(sql: Sql, pool: HostClientPool, agents: Sequence[AgentProcess]) -> None:
    """Each agent's saved certificate is the one its host row names, and the CP reaches it."""
    for agent in agents:
        rows = await sql("SELECT cert_fingerprint FROM hosts WHERE id = :h", h=agent.host_uuid)
        assert fingerprint_pem(agent.credentials()["cert_pem"]) == rows[0][0], agent.ip
        await listed(pool, agent)


async def all_hold(
    sql: Sql, pool: HostClientPool, agents: Sequence[AgentProcess], load: Load, *, cp_down: bool = False
) -> None:
    await records_match_hosts(sql, pool, agents)
    await files_kept(sql, load)
    await credentials_whole(sql, pool, agents)
    load.definite(cp_down=cp_down)


async def destroy_everything(sql: Sql, pool: HostClientPool, agents: Sequence[AgentProcess]) -> None:
    """Between tests of one fleet: every sandbox gone from hosts and records, so each test
    checks its own."""
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.destroy_all_over(pool)
    await sql("UPDATE sandboxes SET status = 'stopped' WHERE status NOT IN ('stopped', 'error')")
