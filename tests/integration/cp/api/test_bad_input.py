"""Bad input everywhere gets the envelope and a 4xx; the error mapping lives in one place."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import errors
from warren.config import Settings
from warren.cp.http_errors import status_and_code

from .conftest import assert_error, signup

# conftest caps JSON bodies at 64 KiB for this suite.
CAP = 64 * 1024


async def test_body_over_cap_is_413(client: httpx.AsyncClient) -> None:
    big = json.dumps({"email": "a@b.c", "password": "x" * (CAP + 10), "name": "n"}).encode()
    r = await client.post("/v1/auth/signup", content=big, headers={"content-type": "application/json"})
    assert_error(r, 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"email": "a@b.c", "password": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'", "name": "n"}'

    r = await client.post("/v1/auth/signup", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "too_large")
    # a lying Content-Length does not help
    r = await client.post(
        "/v1/auth/login", content=big, headers={"content-type": "application/json", "content-length": "10"}
    )
    assert r.status_code in (400, 413)


async def test_malformed_and_hostile_json(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    bodies = [
        b"{",
        b"nul",
        b'{"email": "a@b.c", "password": "password1", "name": "x",}',
        b"[" * 5000 + b"]" * 5000,  # deep nesting within the cap
        b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'"just a string"',
        b"123",
        b"\xff\xfe\x00garbage",
        b'{"name": "\\ud800"}',  # lone surrogate escape
    ]
    for body in bodies:
        for method, path in [
            ("POST", "/v1/auth/signup"),
            ("POST", "/v1/teams"),
            ("PATCH", f"/v1/teams/{u.team_id}"),
        ]:
            r = await client.request(
                method, path, content=body, headers={"content-type": "application/json", **u.h}
            )
            assert_error(r, 400, "invalid_request")


async def test_wrong_types_and_unknown_fields(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    cases = [
        ("POST", "/v1/auth/login", {"email": ["a"], "password": "x"}),
        ("POST", "/v1/auth/login", {"email": None, "password": "x"}),
        ("POST", "/v1/auth/signup", {"email": {"$ne": 1}, "password": "password1", "name": "x"}),
        ("POST", "/v1/teams", {"name": 12}),
        ("POST", "/v1/teams", {"name": "ok", "owner": "me"}),
        ("POST", "/v1/teams", {}),
        ("POST", "/v1/auth/switch-team", {"team_id": 5}),
        ("POST", f"/v1/teams/{u.team_id}/members", {"email": True}),
        ("PATCH", f"/v1/teams/{u.team_id}/members/{u.user_id}", {"role": ["admin"]}),
        ("POST", "/v1/api-keys", {"name": {"x": 1}}),
        ("POST", "/v1/auth/signup", {"email": "a\u0000@b.c", "password": "password1", "name": "x"}),
        ("POST", "/v1/teams", {"name": "nul\u0000byte"}),
    ]
    for method, path, body in cases:
        r = await client.request(method, path, json=body, headers=u.h)
        assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/teams/{team}x",
        "/v1/teams/team-{long}",
        "/v1/teams/usr-{body}",
        "/v1/teams/TEAM-{body}",
        "/v1/teams/team-{body}%00",
        "/v1/teams/team-' OR '1'='1",
        "/v1/teams/team-%E2%98%83%E2%98%83%E2%98%83",
        "/v1/teams/{team}/members/usr-",
        "/v1/teams/{team}/members/{team}",
        "/v1/api-keys/key-" + "z" * 25 + "z",
        "/v1/api-keys/key-zzzzzzzzzzzzzzzzzzzzzzzzz",  # > 2^128
    ],
)
async def test_invalid_ids_are_400(client: httpx.AsyncClient, path: str) -> None:
    u = await signup(client)
    body = u.team_id.removeprefix("team-")
    url = path.format(team=u.team_id, long="0" * 26, body=body)
    method = "DELETE" if "/members/" in url or "api-keys" in url else "GET"
    assert_error(await client.request(method, url, headers=u.h), 400, "invalid_request")


async def test_unicode_and_long_names(client: httpx.AsyncClient) -> None:
    # user display names accept unicode (they are not team names), within 1-100 chars
    for name in ["Zoë Ångström", "山田太郎", "🚀 rocket", "O'Brien"]:
        u = await signup(client, name=name)
        assert u.name == name.strip()
        teams = (await client.get("/v1/teams", headers=u.h)).json()
        assert teams[0]["name"] == f"{name}'s Team"
    r = await client.post(
        "/v1/auth/signup", json={"email": "long@x.test", "password": "password1", "name": "é" * 101}
    )
    assert_error(r, 400, "invalid_request")
    r = await client.post(
        "/v1/auth/signup", json={"email": "a" * 250 + "@x.test", "password": "password1", "name": "x"}
    )
    assert_error(r, 400, "invalid_request")
    r = await client.post("/v1/auth/signup", json={"email": "ok@x.test", "password": "p" * 2000, "name": "x"})
    assert_error(r, 400, "invalid_request")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nope"), 404, "not_found")
    assert_error(await client.put("/v1/auth/login", json={}), 405, "method_not_allowed")
    assert_error(await client.delete("/v1/teams"), 405)


def test_domain_error_mapping() -> None:
    cases: list[tuple[errors.WarrenError, int, str]] = [
        (errors.InvalidRequest("x"), 400, "invalid_request"),
        (errors.Unauthorized("x"), 401, "unauthorized"),
        (errors.Forbidden("x"), 403, "forbidden"),
        (errors.NotFound("x"), 404, "not_found"),
        (errors.NotFound("x", code="provider_not_found"), 404, "provider_not_found"),
        (errors.Conflict("x"), 409, "conflict"),
        (errors.Conflict("x", code="email_taken"), 409, "email_taken"),
        (errors.InvalidState("x"), 409, "invalid_state"),
        (errors.PayloadTooLarge("x"), 413, "too_large"),
        (errors.ServiceUnavailable("x", code="no_hosts_available"), 503, "no_hosts_available"),
        (errors.InternalError("x"), 500, "internal_error"),
        (errors.WarrenError("x"), 500, "internal_error"),
        (errors.AgentError("x", rpc_code="NOT_FOUND"), 404, "not_found"),
        (errors.AgentError("x", rpc_code="INVALID_ARGUMENT"), 400, "invalid_request"),
        (errors.AgentError("x", rpc_code="FAILED_PRECONDITION"), 409, "conflict"),
        (errors.AgentError("x", rpc_code="UNAVAILABLE"), 502, "agent_error"),
        (errors.AgentError("x", rpc_code="INTERNAL"), 502, "agent_error"),
        (errors.AgentError("x"), 502, "agent_error"),
    ]
    for exc, status, code in cases:
        assert status_and_code(exc) == (status, code), exc


boom = APIRouter()


@boom.get("/_test/boom")
async def explode() -> None:
    raise RuntimeError("secret connection string postgres://user:pw@db")


@boom.get("/_test/conflict")
async def conflict() -> None:
    raise errors.Conflict("host has sandboxes", code="has_active_sandboxes", sandbox_ids=["sb-1"])


async def test_unexpected_errors_do_not_leak(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.include_router(boom)
    r = await client.get("/_test/boom")
    assert_error(r, 500, "internal_error")
    assert "postgres" not in r.text and "secret" not in r.text
    r = await client.get("/_test/conflict")
    assert r.status_code == 409
    assert r.json() == {
        "error": {"code": "has_active_sandboxes", "message": "host has sandboxes", "sandbox_ids": ["sb-1"]}
    }


async def test_browsers_get_error_pages_outside_the_api(client: httpx.AsyncClient) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = await client.get("/no-such-page", headers=html)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-testid="error-message"' in page.text and "route not found" in page.text
    # Scripts and API clients keep the envelope.
    assert_error(await client.get("/no-such-page"), 404, "not_found")
    assert_error(await client.get("/v1/no-such-route", headers=html), 404, "not_found")


@asynccontextmanager
async def signed_in_app(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, httpx.AsyncClient, Any]]:
    """An app of its own with ``settings`` (lifespan run), its engine, a client and a signed-up
    user. Errors the app re-raised would surface in the client: a 503 must be an answer."""
    from warren.cp.app import create_app

    from .conftest import PUBLIC_URL

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            yield application.state.engine, c, await signup(c)


async def test_exhausted_connection_pool_is_503_then_recovers(db_url: str) -> None:
    """A burst past the pool waits for a connection (no overflow connections are opened); one
    that waits longer than the pool timeout gets 503 ``database_busy``, not a 500."""
    from warren.cp.dashboard import session as sessions

    from .conftest import make_settings

    settings = make_settings(
        db_url, db_pool_size=2, db_max_overflow=0, db_pool_timeout_s=0.3, monitor_concurrency=1
    )
    async with signed_in_app(settings) as (engine, c, user):
        auth = {"Authorization": f"Bearer {user.token}"}
        async with engine.connect(), engine.connect():  # every pooled connection busy
            r = await c.get("/v1/sandboxes", headers=auth)
            assert_error(r, 503, "database_busy")
            assert engine.pool.checkedout() == 2  # nothing opened past the pool
            # A signed-in browser on a dashboard page gets a page saying so, not the JSON
            # envelope; the API stays JSON whatever the client accepts.
            signed_in = sessions.Session(csrf="c" * 43, token=user.token)
            cookie, _ = sessions.encode(settings.jwt_secret, signed_in)
            page = await c.get(
                "/dashboard/sandboxes",
                headers={"Accept": "text/html,*/*;q=0.8", "Cookie": f"{sessions.COOKIE_NAME}={cookie}"},
            )
            assert page.status_code == 503
            assert page.headers["content-type"].startswith("text/html")
            assert "database connections are all busy" in page.text
            r = await c.get("/v1/sandboxes", headers={**auth, "Accept": "text/html"})
            assert_error(r, 503, "database_busy")
        r = await c.get("/v1/sandboxes", headers=auth)
        assert r.status_code == 200, r.text


async def test_a_server_out_of_connections_is_503(db_url: str) -> None:
    """PostgreSQL refusing a new connection for want of slots (``max_connections`` or the role's
    limit reached: SQLSTATE 53300) is a passing condition like an exhausted pool: 503
    ``database_busy``, not a 500 (it was ``internal_error``)."""
    import uuid

    import asyncpg
    from sqlalchemy.engine import make_url

    from .conftest import make_settings

    url = make_url(db_url)
    admin = f"postgresql://{url.username}:{url.password}@{url.host}:{url.port}/{url.database}"
    role = f"limited_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT {url.username} TO {role}")
        limited = url.set(username=role, password="pw").render_as_string(hide_password=False)
        async with signed_in_app(make_settings(limited, monitor_concurrency=1)) as (engine, c, user):
            auth = {"Authorization": f"Bearer {user.token}"}
            await conn.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")
            await engine.dispose()  # the next request must open a connection
            r = await c.get("/v1/sandboxes", headers=auth)
            assert_error(r, 503, "database_busy")
            await conn.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
            r = await c.get("/v1/sandboxes", headers=auth)
            assert r.status_code == 200, r.text
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.close()


def test_monitor_concurrency_must_leave_connections_for_requests(db_url: str) -> None:
    from pydantic import ValidationError

    from .conftest import make_settings

    with pytest.raises(ValidationError, match="WARREN_MONITOR_CONCURRENCY"):
        make_settings(db_url, db_pool_size=8, monitor_concurrency=8)
