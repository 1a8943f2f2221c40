"""A live Warren platform for the SDK tests and the benchmark, started the way an operator
does it: the real control plane app served by uvicorn in its OWN process (so blocking SDK calls
from a test never stall it, and its RSS can be measured), plus real ``warren agent`` processes
on loopback addresses, each registered through the API with a one-time token (mTLS only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from warren.cp.db.engine import to_async_url

JWT_SECRET = "sdk-test-secret-" + "s" * 40
PASSWORD = "pw-" + "x" * 12
MINIMAL_CACHE = Path(os.environ.get("WARREN_TEST_MINIMAL_DIR", "/var/cache/warren-test/templates/minimal"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class CPProcess:
    """``uvicorn warren.cp.app:create_app --factory`` with settings from ``WARREN_*``."""

    def __init__(self, db_url: str, home: Path) -> None:
        self.db_url = db_url
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "cp.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "WARREN_HOME": str(self.home),
            "WARREN_DATABASE_URL": self.db_url,
            "WARREN_JWT_SECRET": JWT_SECRET,
            "WARREN_PUBLIC_URL": self.url,
        }

    def start(self) -> CPProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "uvicorn", "warren.cp.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"control plane did not start:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Platform:
    cp: CPProcess
    email: str
    token: str  # the admin user's JWT
    api_key: str
    team_id: str
    agents: list[Any] = field(default_factory=list)

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
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(statement), params)
                return result.all() if result.returns_rows else result.rowcount
        finally:
            await engine.dispose()

    async def add_agent(self, ip: str, data_dir: Path) -> Any:
        """Create a regular host through the API and start a real agent registered with its
        one-time token; returns once the host is online."""
        from hosts.agentproc import AgentProcess  # the hosts engineer's helper (tests/integration/hosts)

        # Agents share the debootstrapped `minimal` the agent tests cache (else each builds it).
        if MINIMAL_CACHE.joinpath("template.json").exists():
            os.environ.setdefault("WARREN_TEST_MINIMAL_DIR", str(MINIMAL_CACHE))

        async with httpx.AsyncClient(base_url=self.url, headers=self.user_headers, timeout=60) as http:
            r = await http.post("/v1/hosts", json={"type": "regular"})
            assert r.status_code == 201, r.text
            host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
            agent = AgentProcess(ip, data_dir, self.url, port=free_port(ip))
            await agent.start(token)
            self.agents.append(agent)
            for _ in range(600):
                h = (await http.get(f"/v1/hosts/{host_id}")).json()
                if h.get("status") == "online":
                    return agent
                await asyncio.sleep(0.1)
        raise RuntimeError(f"host {host_id} did not come online:\n{agent.log_tail()}")

    async def stop(self) -> None:
        for agent in reversed(self.agents):
            with contextlib.suppress(Exception):
                await agent.stop()
        self.cp.stop()


async def start_platform(
    db_url: str, home: Path, *, agent_ips: tuple[str, ...] = ("127.0.0.21",)
) -> Platform:
    cp = await asyncio.to_thread(CPProcess(db_url, home / "cp").start)
    try:
        email = f"sdk{uuid.uuid4().hex[:10]}@example.com"
        async with httpx.AsyncClient(base_url=cp.url, timeout=60) as http:
            r = await http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "SDK"})
            assert r.status_code == 201, r.text
            auth = r.json()
            p = Platform(cp, email, auth["token"], "", auth["team_id"])
            # Regular hosts are created by platform admins.
            await p.sql("UPDATE users SET is_admin = true WHERE email = :e", e=email)
            r = await http.post("/v1/api-keys", json={"name": "sdk-tests"}, headers=p.user_headers)
            assert r.status_code == 201, r.text
            p.api_key = r.json()["key"]
        for i, ip in enumerate(agent_ips):
            await p.add_agent(ip, home / f"agent{i}")
        return p
    except BaseException:
        cp.stop()
        raise
