"""A real control plane (the app served by uvicorn on 127.0.0.1) inside the test process, so the
test can move its clock (``warren.clock``) and drive its HostMonitor directly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.config import Settings
from warren.cp.app import create_app
from warren.cp.db.tables import users

JWT_SECRET = "test-secret-" + "x" * 40
PASSWORD = "pw-" + "x" * 12


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class CP:
    def __init__(self, db_url: str, home: Path, **overrides: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(
            home=home, database_url=db_url, jwt_secret=JWT_SECRET, public_url=self.url,
            monitor_interval_s=3600, **overrides,
        )  # fmt: skip
        self.app: FastAPI = create_app(self.settings)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self._task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(base_url=self.url, timeout=120)

    async def start(self) -> CP:
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):
            if self._server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        raise RuntimeError("control plane did not start")

    async def stop(self) -> None:
        await self.http.aclose()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 30)

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.app.state.engine
        return engine

    # -- accounts ---------------------------------------------------------------------------
    async def signup(self, *, admin: bool = False) -> User:
        email = f"u{uuid.uuid4().hex[:12]}@example.com"
        r = await self.http.post(
            "/v1/auth/signup", json={"email": email, "password": "pw-" + "x" * 12, "name": "U"}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        user = User(self, body["token"], body["user_id"], body["team_id"], email)
        if admin:
            async with self.engine.begin() as conn:
                await conn.execute(
                    users.update()
                    .where(users.c.id == ids.parse_id(ids.Kind.USER, user.id))
                    .values(is_admin=True)
                )
        return user


class User:
    def __init__(self, cp: CP, token: str, user_id: str, team_id: str, email: str) -> None:
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
        body: dict[str, Any] = {"type": type}
        if team_id:
            body["team_id"] = team_id
        r = await self.req("POST", "/v1/hosts", json=body)
        assert r.status_code == 201, r.text
        return r.json()["host"]["id"], r.json()["registration_token"]


async def set_byoc(admin: User, team_id: str) -> None:
    r = await admin.req("PUT", f"/v1/admin/teams/{team_id}/byoc", json={"enabled": True})
    assert r.status_code == 204, r.text


async def sql(cp: CP, statement: str, **params: Any) -> Any:
    async with cp.engine.begin() as conn:
        result = await conn.execute(sa.text(statement), params)
        return result.all() if result.returns_rows else result.rowcount
