"""SPEC §2.1 signup / login / switch-team, §7.6 loginTeam, §7.7 JWT, §2.0 auth failures."""

from __future__ import annotations

import uuid

import httpx
import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.security.tokens import issue_host_jwt, issue_user_jwt

from .conftest import JWT_SECRET, add_member, assert_error, make_admin, signup, unique_email


async def test_signup_creates_user_default_team_and_owner_jwt(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email = unique_email("Mixed")
    r = await client.post(
        "/v1/auth/signup", json={"email": f"  {email.upper()} ", "password": "password1", "name": "  Zoë  "}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"token", "user_id", "team_id", "email", "name"}
    assert body["email"] == email.lower() and body["name"] == "Zoë"
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == body["user_id"] and claims["team_id"] == body["team_id"]
    assert claims["role"] == "owner" and claims["name"] == "Zoë" and claims["email"] == email.lower()
    assert "is_admin" not in claims and "typ" not in claims
    assert claims["exp"] - claims["iat"] == 6 * 3600
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT t.name, t.slug, ut.role, ut.is_default, u.password_hash FROM users u "
                    "JOIN users_teams ut ON ut.user_id = u.id JOIN teams t ON t.id = ut.team_id "
                    "WHERE u.email = :e"
                ),
                {"e": email.lower()},
            )
        ).one()
    assert row.name == "Zoë's Team" and row.role == "owner" and row.is_default is True
    assert row.password_hash.startswith("$argon2id$")
    assert len(row.slug) == 13 and row.slug[6] == "-"


async def test_signup_validation_order_and_messages(client: httpx.AsyncClient) -> None:
    async def go(email: str, password: str, name: str) -> httpx.Response:
        return await client.post("/v1/auth/signup", json={"email": email, "password": password, "name": name})

    # email first: even with a bad password and name, the email error wins
    assert_error(await go("ab", "x", ""), 400, "invalid_request", "email")
    assert_error(await go("no-at-sign", "password1", "N"), 400, "invalid_request", "email")
    assert_error(await go(unique_email(), "short", ""), 400, "invalid_request", "password")
    assert_error(await go(unique_email(), "password1", "   "), 400, "invalid_request", "name")
    assert_error(await go(unique_email(), "password1", "n" * 101), 400, "invalid_request", "name")
    r = await go(unique_email(), "password1", "n" * 100)
    assert r.status_code == 201


async def test_signup_duplicate_email_409(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    r = await client.post(
        "/v1/auth/signup", json={"email": u.email.upper(), "password": "password1", "name": "Again"}
    )
    assert_error(r, 409, "email_taken")


async def test_signup_bad_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/auth/signup", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "invalid_request", "invalid JSON body")
    r = await client.post("/v1/auth/signup", json={"email": 5, "password": "password1", "name": "x"})
    assert_error(r, 400, "invalid_request")
    r = await client.post("/v1/auth/signup", json=["not", "an", "object"])
    assert_error(r, 400, "invalid_request")
    r = await client.post(
        "/v1/auth/signup", json={"email": unique_email(), "password": "password1", "name": "x", "admin": True}
    )
    assert_error(r, 400, "invalid_request", "unknown field")


async def test_login_success_and_failures(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    u = await signup(client, name="Lou")
    r = await client.post("/v1/auth/login", json={"email": f" {u.email.upper()} ", "password": u.password})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["team_id"] == u.team_id and body["user_id"] == u.user_id and body["name"] == "Lou"

    wrong = await client.post("/v1/auth/login", json={"email": u.email, "password": "wrong password"})
    unknown = await client.post("/v1/auth/login", json={"email": unique_email(), "password": "whatever1"})
    for resp in (wrong, unknown):
        assert_error(resp, 401, "unauthorized")
        assert resp.json()["error"]["message"] == "invalid email or password"

    # OAuth-only user (no password) gets the same answer
    oauth_email = unique_email("oauth")
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (id, email, name) VALUES (:i, :e, 'O')"),
            {"i": uuid.uuid4(), "e": oauth_email},
        )
    r = await client.post("/v1/auth/login", json={"email": oauth_email, "password": "anything1"})
    assert_error(r, 401, "unauthorized")
    assert r.json()["error"]["message"] == "invalid email or password"

    assert_error(
        await client.post("/v1/auth/login", json={"email": "", "password": "x"}), 400, "invalid_request"
    )
    assert_error(await client.post("/v1/auth/login", json={"email": u.email, "password": ""}), 400)
    assert_error(await client.post("/v1/auth/login", json={"email": u.email}), 400, "invalid_request")


async def test_login_with_no_live_team_is_a_teamless_token(client: httpx.AsyncClient) -> None:
    """Session 14 (docs/spec.md §2.1): no longer 403 ``no_team``; the token names no team and
    every team-scoped route answers 403 ``no_team`` saying what to do (tests/integration/cp/api/
    test_teamless.py has the flows)."""
    u = await signup(client)
    r = await client.delete(f"/v1/teams/{u.team_id}", headers=u.h)
    assert r.status_code == 204
    r = await client.post("/v1/auth/login", json={"email": u.email, "password": u.password})
    assert r.status_code == 200, r.text
    assert r.json()["team_id"] is None
    token = {"Authorization": f"Bearer {r.json()['token']}"}
    assert_error(await client.get("/v1/api-keys", headers=token), 403, "no_team", "accept an invitation")


async def test_login_team_fallback_invited_user(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """§7.6: default team if live; else earliest-joined live team; invited-only users land there."""
    owner1 = await signup(client, name="One")
    owner2 = await signup(client, name="Two")
    invited = await signup(client, name="Inv")
    await add_member(client, owner1, invited)
    await add_member(client, owner2, invited)

    login = {"email": invited.email, "password": invited.password}
    r = await client.post("/v1/auth/login", json=login)
    assert r.json()["team_id"] == invited.team_id  # default team wins

    # Deleting the default team: fall back to the earliest-joined live team (owner1's).
    assert (await client.delete(f"/v1/teams/{invited.team_id}", headers=invited.h)).status_code == 204
    r = await client.post("/v1/auth/login", json=login)
    assert r.status_code == 200 and r.json()["team_id"] == owner1.team_id
    assert jwt.decode(r.json()["token"], JWT_SECRET, algorithms=["HS256"])["role"] == "member"

    # A user who never had a default membership (e.g. invited-only) also falls back.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users_teams SET is_default = false WHERE user_id = :u"),
            {"u": ids.parse_id(ids.Kind.USER, invited.user_id)},
        )
    # owner1's team deleted → next earliest is owner2's
    assert (await client.delete(f"/v1/teams/{owner1.team_id}", headers=owner1.h)).status_code == 204
    r = await client.post("/v1/auth/login", json=login)
    assert r.json()["team_id"] == owner2.team_id


async def test_switch_team(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    owner = await signup(client, name="Own")
    other = await signup(client, name="Mem")
    await add_member(client, owner, other, role="admin")

    # name changed in the DB after the token was issued: switch-team re-reads it
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE users SET name = 'Renamed' WHERE email = :e"), {"e": other.email})
    await make_admin(engine, other)
    r = await client.post("/v1/auth/switch-team", json={"team_id": owner.team_id}, headers=other.h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["team_id"] == owner.team_id and body["name"] == "Renamed" and body["email"] == other.email
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["role"] == "admin" and claims["name"] == "Renamed" and claims["is_admin"] is True

    assert_error(
        await client.post("/v1/auth/switch-team", json={}, headers=other.h),
        400,
        "invalid_request",
        "team_id is required",
    )
    assert_error(
        await client.post("/v1/auth/switch-team", json={"team_id": "team-nope"}, headers=other.h),
        400,
        "invalid_request",
        "invalid team_id",
    )
    missing = ids.team_id(uuid.uuid4())
    assert_error(
        await client.post("/v1/auth/switch-team", json={"team_id": missing}, headers=other.h),
        404,
        "not_found",
    )
    stranger = await signup(client, name="Str")
    assert_error(
        await client.post("/v1/auth/switch-team", json={"team_id": stranger.team_id}, headers=other.h),
        403,
        "forbidden",
        "not a member of this team",
    )
    # soft-deleted team → 404
    assert (await client.delete(f"/v1/teams/{other.team_id}", headers=other.h)).status_code == 204
    assert_error(
        await client.post("/v1/auth/switch-team", json={"team_id": other.team_id}, headers=owner.h),
        404,
        "not_found",
    )
    # no auth / API key only
    assert_error(
        await client.post("/v1/auth/switch-team", json={"team_id": owner.team_id}), 401, "unauthorized"
    )


async def test_jwt_failures(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    assert_error(await client.get("/v1/teams"), 401, "unauthorized", "missing authorization header")
    assert_error(
        await client.get("/v1/teams", headers={"Authorization": "Bearer garbage"}),
        401,
        "unauthorized",
        "invalid or expired token",
    )
    assert_error(
        await client.get("/v1/teams", headers={"Authorization": f"Basic {u.token}"}), 401, "unauthorized"
    )
    forged = jwt.encode(jwt.decode(u.token, JWT_SECRET, algorithms=["HS256"]), "x" * 40, algorithm="HS256")
    assert_error(await client.get("/v1/teams", headers={"Authorization": f"Bearer {forged}"}), 401)
    # host token presented as a user token
    host = issue_host_jwt(JWT_SECRET, uuid.uuid4())
    assert_error(
        await client.get("/v1/teams", headers={"Authorization": f"Bearer {host}"}), 401, "unauthorized"
    )
    # bad id claims
    claims = jwt.decode(u.token, JWT_SECRET, algorithms=["HS256"])
    bad_team = jwt.encode({**claims, "team_id": "team-x"}, JWT_SECRET, algorithm="HS256")
    assert_error(
        await client.get("/v1/teams", headers={"Authorization": f"Bearer {bad_team}"}),
        401,
        None,
        "invalid team ID in token",
    )
    bad_user = jwt.encode({**claims, "sub": "usr-x"}, JWT_SECRET, algorithm="HS256")
    assert_error(
        await client.get("/v1/teams", headers={"Authorization": f"Bearer {bad_user}"}),
        401,
        None,
        "invalid user ID in token",
    )
    # a signed token for a user that does not exist
    ghost = issue_user_jwt(
        JWT_SECRET,
        user_id=uuid.uuid4(),
        team_id=ids.parse_id(ids.Kind.TEAM, u.team_id),
        role="owner",
        email="g@h",
        name="g",
    )
    assert_error(await client.get("/v1/teams", headers={"Authorization": f"Bearer {ghost}"}), 401)


async def test_jwt_expires_after_six_hours(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    try:
        clock.advance(6 * 3600 - 60)
        assert (await client.get("/v1/teams", headers=u.h)).status_code == 200
        clock.advance(120)
        assert_error(
            await client.get("/v1/teams", headers=u.h), 401, "unauthorized", "invalid or expired token"
        )
    finally:
        clock.reset()


async def test_api_key_refused_on_jwt_routes(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    key = (await client.post("/v1/api-keys", json={"name": "k"}, headers=u.h)).json()["key"]
    for method, path in [
        ("GET", "/v1/teams"),
        ("GET", "/v1/api-keys"),
        ("GET", "/v1/users/search?email=abc@"),
        ("POST", "/v1/auth/switch-team"),
        ("PUT", f"/v1/admin/teams/{u.team_id}/byoc"),
    ]:
        r = await client.request(method, path, headers={"X-API-Key": key}, json={})
        assert_error(r, 401, "unauthorized")
    # even together with a valid JWT, a JWT-only route authenticates by the JWT
    r = await client.get("/v1/teams", headers={"X-API-Key": key, **u.h})
    assert r.status_code == 200


async def test_team_context_api_key_and_jwt(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    u = await signup(client)
    key = (await client.post("/v1/api-keys", json={"name": "probe"}, headers=u.h)).json()["key"]
    r = await client.get("/_test/whoami", headers={"X-API-Key": key})
    assert r.status_code == 200 and r.json()["kind"] == "api_key" and r.json()["api_key_name"] == "probe"
    assert r.json()["team_id"] == str(ids.parse_id(ids.Kind.TEAM, u.team_id))
    # the API key wins when both are sent
    r = await client.get("/_test/whoami", headers={"X-API-Key": key, **u.h})
    assert r.json()["kind"] == "api_key"
    r = await client.get("/_test/whoami", headers=u.h)
    assert r.json()["kind"] == "jwt" and r.json()["role"] == "owner"
    assert_error(
        await client.get("/_test/whoami", headers={"X-API-Key": "wrn_" + "0" * 32}),
        401,
        None,
        "invalid API key",
    )
    assert_error(
        await client.get("/_test/whoami", headers={"X-API-Key": "nope"}), 401, None, "invalid API key"
    )
    assert_error(await client.get("/_test/whoami"), 401, "unauthorized")
    # last_used is recorded
    async with engine.connect() as conn:
        last = (await conn.execute(text("SELECT last_used FROM team_api_keys WHERE name = 'probe'"))).scalar()
    assert last is not None
