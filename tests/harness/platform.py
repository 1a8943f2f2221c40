"""A live Warren platform for the SDK and attack suites and the benchmarks, started the way an
operator does it: the control plane in its own process (:class:`~tests.harness.cp.CPProcess`)
plus real ``warren agent`` processes on loopback addresses, each registered through the API
with a one-time token (mTLS only)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from tests.harness.agent import AgentProcess
from tests.harness.cp import PASSWORD, CPProcess, run_sql
from tests.harness.environ import environ
from tests.harness.invitations import verify_email_async
from tests.harness.machine import free_port
from tests.harness.tenant import signed_up
from warren.cp.db.engine import to_async_url


@dataclass
class Platform:
    cp: CPProcess
    email: str
    token: str  # the admin user's JWT
    api_key: str
    team_id: str
    agents: list[AgentProcess] = field(default_factory=list)
    host_ids: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.cp.url

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    @property
    def user_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def sdk(self) -> dict[str, Any]:
        """Keyword arguments that point the SDK at this platform."""
        return {"url": self.url, "api_key": self.api_key}

    async def sql(self, statement: str, **params: Any) -> Any:
        engine = create_async_engine(to_async_url(self.cp.db_url))
        try:
            return await run_sql(engine, statement, **params)
        finally:
            await engine.dispose()

    async def add_agent(self, ip: str, data_dir: Path) -> AgentProcess:
        """Create a regular host through the API and start a real agent registered with its
        one-time token; returns once the host is online."""
        async with httpx.AsyncClient(base_url=self.url, headers=self.user_headers, timeout=60) as http:
            r = await http.post("/v1/hosts", json={"type": "regular"})
            assert r.status_code == 201, r.text
            host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
            agent = AgentProcess.registered(ip, data_dir, self.url, port=free_port(ip))
            await agent.astart(token)
            self.agents.append(agent)
            self.host_ids.append(host_id)
            for _ in range(600):
                h = (await http.get(f"/v1/hosts/{host_id}")).json()
                if h.get("status") == "online":
                    return agent
                await asyncio.sleep(0.1)
        raise RuntimeError(f"host {host_id} did not come online:\n{agent.log_tail()}")

    async def stop(self) -> None:
        # A force delete destroys every sandbox on the host (any team's) and terminates its
        # agent: a plain SIGTERM would keep them running, as a production agent restart does,
        # and leave their mounts and network slots behind the test.
        async with httpx.AsyncClient(base_url=self.url, headers=self.user_headers, timeout=90) as http:
            for host_id in self.host_ids:
                with contextlib.suppress(httpx.HTTPError):
                    await http.delete(f"/v1/hosts/{host_id}", params={"force": "true"})
        for agent in reversed(self.agents):
            with contextlib.suppress(Exception):
                await agent.astop()
        self.cp.stop()


@contextlib.contextmanager
def api_sandbox(platform: Platform, **body: Any) -> Iterator[str]:
    """A sandbox of ``minimal`` made through the REST API (``body`` adds to or overrides the
    create's fields; no idle timeout), deleted afterwards."""
    body = {"template": "minimal", "timeout_sec": 0, **body}
    r = httpx.post(f"{platform.url}/v1/sandboxes", json=body, headers=platform.headers, timeout=120)
    assert r.status_code == 201, r.text
    sid = str(r.json()["id"])
    try:
        yield sid
    finally:
        httpx.delete(f"{platform.url}/v1/sandboxes/{sid}", headers=platform.headers, timeout=120)


async def start_platform(
    db_url: str, home: Path, *, agent_ips: tuple[str, ...] = ("127.0.0.21",)
) -> Platform:
    """A CP process on ``db_url`` (its home under ``home``), a platform admin with an API key,
    and one registered agent per address of ``agent_ips``."""
    cp = await asyncio.to_thread(CPProcess(db_url, home / "cp").start)
    try:
        p = await _admin_account(cp)
        for i, ip in enumerate(agent_ips):
            await p.add_agent(ip, home / f"agent{i}")
        return p
    except BaseException:
        cp.stop()
        raise


async def _admin_account(cp: CPProcess) -> Platform:
    """A new platform admin (regular hosts are created by platform admins) with a team of its
    own and an API key, on ``cp``."""
    email = f"sdk{uuid.uuid4().hex[:10]}@example.com"
    async with httpx.AsyncClient(base_url=cp.url, timeout=60) as http:
        r = await http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "SDK"})
        assert r.status_code == 201, r.text
        auth = r.json()
        p = Platform(cp, email, auth["token"], "", auth["team_id"])
        await verify_email_async(http, auth["token"])
        await p.sql("UPDATE users SET is_admin = true WHERE email = :e", e=email)
        r = await http.post("/v1/api-keys", json={"name": "sdk-tests"}, headers=p.user_headers)
        assert r.status_code == 201, r.text
        p.api_key = r.json()["key"]
    return p


@contextlib.asynccontextmanager
async def module_view(shared: Platform) -> AsyncIterator[Platform]:
    """``shared`` as one test module sees it: a platform admin and a team of the module's own,
    on the same CP and agents. Afterwards the sandboxes of that team, and of every tenant
    signed up on the platform meanwhile (:func:`tests.harness.tenant.signup`), are deleted, so
    the next module finds the host as empty as a new one."""
    p = await _admin_account(shared.cp)
    p.agents, p.host_ids = shared.agents, shared.host_ids
    tenants_before = len(signed_up(shared.url))
    try:
        yield p
    finally:
        keys = [p.api_key, *(t.api_key for t in signed_up(shared.url)[tenants_before:])]
        await _delete_sandboxes(shared.url, keys)


async def _delete_sandboxes(url: str, api_keys: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for key in api_keys:
            h = {"X-API-Key": key}
            with contextlib.suppress(httpx.HTTPError):
                listed = await http.get("/v1/sandboxes", headers=h)
                if listed.status_code != 200:
                    continue  # the key was revoked, or its team deleted, by the module
                ids = [sb["id"] for sb in listed.json()]
                await asyncio.gather(*(http.delete(f"/v1/sandboxes/{i}", headers=h) for i in ids))


@contextlib.asynccontextmanager
async def running_platform(
    db_url: str, home: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[Platform]:
    """:func:`start_platform`, with ``env`` set while its CP and agent start (they read their
    settings from the environment they start with); stopped afterwards."""
    with environ(env or {}):
        p = await start_platform(db_url, home)
    try:
        yield p
    finally:
        await p.stop()


@contextlib.asynccontextmanager
async def second_replica(
    platform: Platform, home: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[CPProcess]:
    """A second ``warren cp`` on ``platform``'s database and CA (its agents trust the new
    replica's client certificate), with ``env`` set while it starts; stopped afterwards."""
    ca = platform.cp.home / "ca"
    replica = CPProcess(platform.cp.db_url, home)
    ca_env = {"WARREN_CA_CERT": str(ca / "ca.pem"), "WARREN_CA_KEY": str(ca / "ca.key")}
    with environ({**ca_env, **(env or {})}):
        await asyncio.to_thread(replica.start)
    try:
        yield replica
    finally:
        await asyncio.to_thread(replica.stop)
