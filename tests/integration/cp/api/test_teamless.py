"""Signing in with no live team (session 14, docs/spec.md §2.1): the token names no team; with it
the user reads their profile, lists and answers invitations and creates a team, and every
team-scoped route answers 403 ``no_team`` saying what to do. Accepting hands back a token for
the team joined. The invitee's list is paged (``limit``, ``X-Next-Cursor``).

The real app over ASGI on a real PostgreSQL (this folder's conftest)."""

from __future__ import annotations

import uuid

import httpx
import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.security import passwords

from .conftest import JWT_SECRET, User, assert_error, signup

NO_TEAM_HINT = "accept an invitation or create a team"


async def _teamless(client: httpx.AsyncClient, name: str = "Tess") -> User:
    """A user whose only team was deleted, signed in again: a teamless token."""
    u = await signup(client, name=name)
    assert (await client.delete(f"/v1/teams/{u.team_id}", headers=u.h)).status_code == 204
    r = await client.post("/v1/auth/login", json={"email": u.email, "password": u.password})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["team_id"] is None and b["user_id"] == u.user_id, b
    return User(b["token"], b["user_id"], "", b["email"], b["name"], u.password)


async def _invite(client: httpx.AsyncClient, owner: User, team_id: str, email: str) -> str:
    r = await client.post(f"/v1/teams/{team_id}/members", json={"email": email}, headers=owner.h)
    assert r.status_code == 201, r.text
    inv: str = r.json()["id"]
    return inv


async def test_teamless_token_and_profile(client: httpx.AsyncClient) -> None:
    t = await _teamless(client)
    claims = jwt.decode(t.token, JWT_SECRET, algorithms=["HS256"])
    assert claims["team_id"] is None and claims["role"] is None and claims["sub"] == t.user_id
    r = await client.get("/v1/users/me", headers=t.h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "user_id": t.user_id, "email": t.email, "name": t.name, "is_admin": False,
        "team_id": None, "role": None,
    }  # fmt: skip
    assert (await client.get("/v1/teams", headers=t.h)).json() == []
    assert (await client.get("/v1/invitations", headers=t.h)).json() == []
    # Team-scoped routes: 403 no_team with what to do, whichever credential-less verb.
    for method, path in (
        ("GET", "/v1/api-keys"),
        ("POST", "/v1/api-keys"),
        ("GET", "/v1/sandboxes"),
        ("GET", "/v1/users/search?email=tess@example"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/hosts"),
    ):
        assert_error(await client.request(method, path, headers=t.h), 403, "no_team", NO_TEAM_HINT)


async def test_teamless_user_creates_a_team_and_switches_to_it(client: httpx.AsyncClient) -> None:
    t = await _teamless(client)
    r = await client.post("/v1/teams", json={"name": "Fresh Start"}, headers=t.h)
    assert r.status_code == 201, r.text
    team = r.json()
    r = await client.post("/v1/auth/switch-team", json={"team_id": team["id"]}, headers=t.h)
    assert r.status_code == 200 and r.json()["team_id"] == team["id"], r.text
    h = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await client.get("/v1/api-keys", headers=h)).status_code == 200
    me = (await client.get("/v1/users/me", headers=h)).json()
    assert me["team_id"] == team["id"] and me["role"] == "owner"
    # Signing in again lands in that team.
    r = await client.post("/v1/auth/login", json={"email": t.email, "password": t.password})
    assert r.json()["team_id"] == team["id"]


async def test_teamless_user_accepts_an_invitation_and_gets_a_token_for_the_team(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client, name="Olga")
    t = await _teamless(client)
    inv = await _invite(client, owner, owner.team_id, t.email)
    listed = (await client.get("/v1/invitations", headers=t.h)).json()
    assert [i["id"] for i in listed] == [inv]
    r = await client.post(f"/v1/invitations/{inv}/accept", headers=t.h)
    assert r.status_code == 200, r.text
    joined = r.json()
    assert joined["id"] == owner.team_id and joined["role"] == "member"
    claims = jwt.decode(joined["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["team_id"] == owner.team_id and claims["sub"] == t.user_id
    h = {"Authorization": f"Bearer {joined['token']}"}
    assert (await client.get("/v1/sandboxes", headers=h)).status_code == 200
    assert (await client.get(f"/v1/teams/{owner.team_id}", headers=h)).status_code == 200
    # Once used, the invitation is gone.
    assert_error(await client.post(f"/v1/invitations/{inv}/accept", headers=t.h), 404, "not_found")


async def test_teamless_user_declines(client: httpx.AsyncClient) -> None:
    owner = await signup(client, name="Omar")
    t = await _teamless(client)
    inv = await _invite(client, owner, owner.team_id, t.email)
    assert (await client.post(f"/v1/invitations/{inv}/decline", headers=t.h)).status_code == 204
    assert (await client.get("/v1/invitations", headers=t.h)).json() == []
    assert (await client.get("/v1/teams", headers=t.h)).json() == []


async def test_the_invitees_list_is_paged(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    owner = await signup(client, name="Paula")
    t = await _teamless(client)
    made = []
    for n in range(5):
        r = await client.post("/v1/teams", json={"name": f"Pager {n}"}, headers=owner.h)
        assert r.status_code == 201, r.text
        team = r.json()["id"]
        r = await client.post("/v1/auth/switch-team", json={"team_id": team}, headers=owner.h)
        as_owner = User(r.json()["token"], owner.user_id, team, owner.email, owner.name, owner.password)
        made.append(await _invite(client, as_owner, team, t.email))
    assert await _pages(client, t) == ([2, 2, 1], list(reversed(made)))  # newest first, each once
    full = await client.get("/v1/invitations", headers=t.h)
    assert [i["id"] for i in full.json()] == list(reversed(made)) and "X-Next-Cursor" not in full.headers
    # Invitations made at the same instant still page in one total order (time, then id).
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE team_invitations SET created_at = now() WHERE user_id = :u"),
            {"u": ids.parse_id(ids.Kind.USER, t.user_id)},
        )
    by_id = sorted(made, key=lambda i: ids.parse_id(ids.Kind.INVITATION, i), reverse=True)
    assert await _pages(client, t) == ([2, 2, 1], by_id)
    for bad in ({"limit": "0"}, {"limit": "101"}, {"cursor": "not-a-cursor"}):
        assert_error(await client.get("/v1/invitations", params=bad, headers=t.h), 400)


async def _pages(client: httpx.AsyncClient, t: User) -> tuple[list[int], list[str]]:
    """Every page of ``t``'s invitations, two a page: the page sizes and the ids in order."""
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/v1/invitations", params=params, headers=t.h)
        assert r.status_code == 200, r.text
        sizes.append(len(r.json()))
        seen += [i["id"] for i in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            break
    return sizes, seen


async def test_a_deleted_user_cannot_sign_in_nor_use_a_teamless_token(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """An account that never had a team (made by an operator) signs in teamless; once its row
    is gone, its password and its token are refused like unknown ones."""
    email = f"ghost-{uuid.uuid4().hex[:10]}@example.test"
    password = "correct horse battery"
    user = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (id, email, name, password_hash) VALUES (:i, :e, 'Ghost', :p)"),
            {"i": user, "e": email, "p": await passwords.hash_password(password)},
        )
    r = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200 and r.json()["team_id"] is None, r.text
    h = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await client.get("/v1/users/me", headers=h)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM users WHERE id = :i"), {"i": user})
    assert_error(await client.post("/v1/auth/login", json={"email": email, "password": password}), 401)
    for path in ("/v1/users/me", "/v1/invitations", "/v1/teams"):
        assert_error(await client.get(path, headers=h), 401, "unauthorized", "invalid or expired token")
    assert_error(await client.post("/v1/teams", json={"name": "Back"}, headers=h), 401)
