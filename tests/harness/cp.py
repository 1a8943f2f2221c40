"""The control plane, served by uvicorn on a free port of 127.0.0.1, in one of two ways:

* :class:`InProcessCP`: the app as a task on the test's own event loop, so the test moves its
  clock (``warren.clock``), drives its HostMonitor and calls services on its engine;
* :class:`CPProcess`: ``uvicorn warren.cp.app:create_app --factory`` in its own process with
  settings from ``WARREN_*``, the way an operator runs it (blocking SDK calls from a test never
  stall it, its RSS can be measured, and it can be killed outright). It is killed when the test
  process ends without stopping it (:mod:`tests.harness.tether`).

:class:`User` is one signed-up account of an in-process CP, calling its API with a JWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Self

import httpx
import psutil
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness import tether
from tests.harness.invitations import join_team_async, verify_email_async
from tests.harness.machine import free_port, log_lines_at
from warren import ids
from warren.config import HTTP_KEEP_ALIVE_S, Settings
from warren.cp.app import create_app
from warren.cp.db.tables import users
from warren.cp.hosts.client_pool import HostClientPool

JWT_SECRET = "test-secret-" + "x" * 40
PASSWORD = "pw-" + "x" * 12
START_TIMEOUT_S = 60.0
# WARREN_BYOC_ALLOWED_CIDRS of the tests' control planes: their BYOC hosts (fake agents, real
# ones) listen on loopback addresses, which production refuses (docs/hosts.md). A test of the
# refusal gives its CP the production value ("public") itself.
TEST_BYOC_CIDRS = "127.0.0.0/8"
# WARREN_REFUSAL_HOLD_S of the tests' control planes: every client of the suite is 127.0.0.1,
# and many tests are refused on purpose, so the production hold (cp/refusal_hold.py) would
# make unrelated tests wait for each other's 401s. The hold's own tests set it.
REFUSAL_HOLD_S = 0.0


async def run_sql(engine: AsyncEngine, statement: str, **params: Any) -> Any:
    """One statement in its own transaction: its rows, or the row count."""
    async with engine.begin() as conn:
        result = await conn.execute(sa.text(statement), params)
        return result.all() if result.returns_rows else result.rowcount


class InProcessCP:
    """The real app served by uvicorn as a task on the test's event loop. Its monitor and its
    retention pass wait an hour between passes: the tests run them
    (``app.state.monitor.run_once()``, ``services.retention.retention_pass``) when they mean to.
    ``overrides`` are :class:`~warren.config.Settings` fields."""

    def __init__(self, db_url: str, home: Path, **overrides: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        values: dict[str, Any] = {
            "home": home,
            "database_url": db_url,
            "jwt_secret": JWT_SECRET,
            "public_url": self.url,
            "monitor_interval_s": 3600,
            "retention_interval_s": 3600,  # tests that move the clock by days run the pass themselves
            "byoc_allowed_cidrs": TEST_BYOC_CIDRS,
            "refusal_hold_s": REFUSAL_HOLD_S,
            **overrides,
        }
        self.settings = Settings(**values)
        self.app: FastAPI = create_app(self.settings)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
                timeout_keep_alive=HTTP_KEEP_ALIVE_S,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(base_url=self.url, timeout=120)

    async def start(self) -> Self:
        self._task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        raise RuntimeError("control plane did not start")

    async def stop(self) -> None:
        await self.http.aclose()
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 30)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.app.state.engine
        return engine

    @property
    def pool(self) -> HostClientPool:
        """The CP's mTLS clients of its agents."""
        pool: HostClientPool = self.app.state.pool
        return pool

    async def sql(self, statement: str, **params: Any) -> Any:
        return await run_sql(self.engine, statement, **params)

    async def signup(self, *, admin: bool = False) -> User:
        """A new account (and its own team) through the API; ``admin`` makes it a platform admin."""
        email = f"u{uuid.uuid4().hex[:12]}@example.com"
        r = await self.http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "U"})
        assert r.status_code == 201, r.text
        body = r.json()
        await verify_email_async(self.http, body["token"])
        user = User(self, body["token"], body["user_id"], body["team_id"], email)
        if admin:
            async with self.engine.begin() as conn:
                await conn.execute(
                    users.update()
                    .where(users.c.id == ids.parse_id(ids.Kind.USER, user.id))
                    .values(is_admin=True)
                )
        return user

    async def join(self, owner: User, role: str) -> User:
        """A new user added to ``owner``'s team with ``role``, holding a JWT for that team."""
        u = await self.signup()
        await join_team_async(self.http, owner.team_id, u.email, inviter=owner.h, invitee=u.h, role=role)
        r = await u.req("POST", "/v1/auth/switch-team", json={"team_id": owner.team_id})
        assert r.status_code == 200, r.text
        u.token, u.team_id = r.json()["token"], owner.team_id
        return u


class User:
    def __init__(self, cp: InProcessCP, token: str, user_id: str, team_id: str, email: str) -> None:
        self.cp = cp
        self.token = token
        self.id = user_id
        self.team_id = team_id
        self.email = email

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def req(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await self.cp.http.request(method, path, headers=self.h, **kw)
        if r.status_code == 401 and "expired" in r.text:
            # Tests move the CP's clock by days; a user JWT lives 6 h. Log in again.
            login = await self.cp.http.post(
                "/v1/auth/login", json={"email": self.email, "password": PASSWORD}
            )
            if login.status_code == 200:
                self.token = login.json()["token"]
                r = await self.cp.http.request(method, path, headers=self.h, **kw)
        return r

    async def api_key(self) -> str:
        r = await self.req("POST", "/v1/api-keys", json={"name": "k"})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    async def create_host(self, type: str = "regular", team_id: str | None = None) -> tuple[str, str]:
        """A host record and its one-time registration token."""
        body: dict[str, Any] = {"type": type}
        if team_id:
            body["team_id"] = team_id
        r = await self.req("POST", "/v1/hosts", json=body)
        assert r.status_code == 201, r.text
        return r.json()["host"]["id"], r.json()["registration_token"]


async def set_byoc(admin: User, team_id: str) -> None:
    r = await admin.req("PUT", f"/v1/admin/teams/{team_id}/byoc", json={"enabled": True})
    assert r.status_code == 204, r.text


async def sql(cp: InProcessCP, statement: str, **params: Any) -> Any:
    return await cp.sql(statement, **params)


class CPProcess:
    """``warren cp`` with settings from ``WARREN_*`` (the caller's environment, then home,
    database, JWT secret and public URL), its main port and its E2B-compatible port."""

    def __init__(self, db_url: str, home: Path) -> None:
        self.db_url = db_url
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.e2b_port = free_port()
        self.e2b_url = f"http://127.0.0.1:{self.e2b_port}"
        self.log_path = home / "cp.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            "WARREN_BYOC_ALLOWED_CIDRS": TEST_BYOC_CIDRS,  # unless the caller's environment says
            "WARREN_REFUSAL_HOLD_S": str(REFUSAL_HOLD_S),  # likewise
            **os.environ,
            "WARREN_HOME": str(self.home),
            "WARREN_DATABASE_URL": self.db_url,
            "WARREN_JWT_SECRET": JWT_SECRET,
            "WARREN_PUBLIC_URL": self.url,
        }

    def start(self) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "warren.cli.main", "cp", "--no-migrate", "--host", "127.0.0.1",
               "--port", str(self.port), "--e2b-port", str(self.e2b_port)]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # SIGKILL: what it holds goes with its process (its children die with it:
            # warren/parent_death.py), and a graceful stop could wait on a dead test's requests.
            self.proc = tether.popen(cmd, env=self.env(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
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

    def errors_tail(self, n: int = 12) -> str:
        """The last ``n`` ERROR and CRITICAL lines of its log (each cut at 600 characters)."""
        return log_lines_at(self.log_path, ("ERROR", "CRITICAL"), n)

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
