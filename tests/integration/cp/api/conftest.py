"""Fixtures for the accounts tests: the real app over ASGI with a real, freshly migrated
PostgreSQL database per module (``db_url`` from the root conftest)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.cp import REFUSAL_HOLD_S
from tests.harness.invitations import join_team_async, verify_email_async
from warren.config import Settings
from warren.cp.api.deps import TeamContext
from warren.cp.app import create_app

JWT_SECRET = "test-secret-" + "k" * 40
PUBLIC_URL = "http://cp.test"


def make_settings(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url,
        "jwt_secret": JWT_SECRET,
        "public_url": PUBLIC_URL,
        "run_workers": False,
        "max_json_body": 64 * 1024,
        # A module's one client signs up all its tests' users from one address (test_teams
        # passed the default 60); the limit itself is tested in tests/security/test_abuse.py.
        "signup_limit_per_address": 1000,
        # Likewise its refusals (401, 429): past the production budget they would be held
        # (cp/refusal_hold.py, tested in tests/security/test_attack_session29_refusal_flood.py).
        "refusal_hold_s": REFUSAL_HOLD_S,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# A route that accepts API key or JWT, so the TeamContext dependency is tested here even before
# the sandbox routes (its real users) exist. It echoes what the dependency resolved.
probe = APIRouter()


@probe.get("/_test/whoami", include_in_schema=False)
async def whoami(ctx: TeamContext) -> dict[str, object]:
    return {
        "kind": ctx.kind,
        "team_id": str(ctx.team_id),
        "user_id": str(ctx.user_id) if ctx.user_id else None,
        "role": ctx.role,
        "is_admin": ctx.is_admin,
        "api_key_name": ctx.api_key_name,
    }


@pytest.fixture(scope="module")
async def app(db_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(db_url))
    application.include_router(probe)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
async def engine(app: FastAPI) -> AsyncEngine:
    eng: AsyncEngine = app.state.engine
    return eng


@pytest.fixture(scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
        yield c


@dataclass
class User:
    token: str
    user_id: str
    team_id: str
    email: str
    name: str
    password: str

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def unique_email(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


async def signup(
    client: httpx.AsyncClient, name: str = "Ann", email: str | None = None, *, verified: bool = True
) -> User:
    """A new account; ``verified``: its holder opened the verification link (only a verified
    email may accept an invitation)."""
    email = email or unique_email(name.lower().replace(" ", ""))
    password = "correct horse battery"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password, "name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    if verified:
        await verify_email_async(client, body["token"])
    return User(body["token"], body["user_id"], body["team_id"], body["email"], body["name"], password)


async def switch(client: httpx.AsyncClient, user: User, team_id: str) -> User:
    r = await client.post("/v1/auth/switch-team", json={"team_id": team_id}, headers=user.h)
    assert r.status_code == 200, r.text
    b = r.json()
    return User(b["token"], b["user_id"], b["team_id"], b["email"], b["name"], user.password)


async def add_member(client: httpx.AsyncClient, owner: User, member: User, role: str = "member") -> User:
    """Add ``member`` to owner's current team with ``role``; returns member's JWT for that team."""
    await join_team_async(client, owner.team_id, member.email, inviter=owner.h, invitee=member.h, role=role)
    return await switch(client, member, owner.team_id)


async def make_admin(engine: AsyncEngine, user: User) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE users SET is_admin = true WHERE email = :e"), {"e": user.email})


def assert_error(r: httpx.Response, status: int, code: str | None = None, message: str | None = None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if message is not None:
        assert message in body["error"]["message"], body
