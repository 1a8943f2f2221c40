"""SPEC §2.2 API keys, §2.3 user search, §2.10 admin BYOC."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids

from .conftest import add_member, assert_error, make_admin, signup


async def test_api_key_lifecycle(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    owner = await signup(client, name="Keys")
    member = await add_member(client, owner, await signup(client, name="KM"))
    r = await client.post("/v1/api-keys", json={"name": "  ci  "}, headers=owner.h)
    assert r.status_code == 201, r.text
    first = r.json()
    assert re.fullmatch(r"wrn_[0-9a-f]{32}", first["key"]) and first["key_prefix"] == first["key"][:10]
    assert (
        first["name"] == "ci" and first["team_id"] == owner.team_id and first["created_by"] == owner.user_id
    )
    assert first["creator_email"] == owner.email and "last_used" not in first
    clock.advance(2)
    try:
        r = await client.post("/v1/api-keys", headers=member.h)  # no body at all
        second = r.json()
        assert r.status_code == 201 and second["name"] == "Unnamed API Key"
        clock.advance(2)
        r = await client.post("/v1/api-keys", json={"name": ""}, headers=member.h)
        third = r.json()
        assert third["name"] == "Unnamed API Key"
    finally:
        clock.reset()
    listed = (await client.get("/v1/api-keys", headers=member.h)).json()
    assert [k["id"] for k in listed] == [third["id"], second["id"], first["id"]]  # newest first
    assert all("key" not in k for k in listed)
    assert {k["creator_email"] for k in listed} == {owner.email, member.email}
    # at rest: only the hash and prefix
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT key_hash, key_prefix FROM team_api_keys WHERE key_prefix = :p"),
                {"p": first["key_prefix"]},
            )
        ).one()
    assert re.fullmatch(r"[0-9a-f]{64}", row.key_hash) and first["key"] not in row.key_hash

    # another team cannot see or delete them
    stranger = await signup(client)
    assert (await client.get("/v1/api-keys", headers=stranger.h)).json() == []
    assert (await client.delete(f"/v1/api-keys/{first['id']}", headers=stranger.h)).status_code == 204
    assert (await client.get("/_test/whoami", headers={"X-API-Key": first["key"]})).status_code == 200
    # delete: 204, then the key stops working; deleting again is still 204
    assert (await client.delete(f"/v1/api-keys/{first['id']}", headers=member.h)).status_code == 204
    assert_error(await client.get("/_test/whoami", headers={"X-API-Key": first["key"]}), 401)
    assert (await client.delete(f"/v1/api-keys/{first['id']}", headers=member.h)).status_code == 204
    assert (
        await client.delete(f"/v1/api-keys/{ids.api_key_id(uuid.uuid4())}", headers=member.h)
    ).status_code == 204
    for bad in ("nope", "key-", "key-" + "z" * 26, "usr-" + "0" * 25, "key-" + "A" * 25):
        assert_error(await client.delete(f"/v1/api-keys/{bad}", headers=member.h), 400, "invalid_request")
    assert_error(await client.post("/v1/api-keys", json={"name": "n" * 201}, headers=owner.h), 400)
    assert_error(await client.post("/v1/api-keys", json={"name": 7}, headers=owner.h), 400)
    assert_error(
        await client.post("/v1/api-keys", json={"nam": "x"}, headers=owner.h), 400, None, "unknown field"
    )
    assert_error(await client.get("/v1/api-keys"), 401)


async def test_last_used_updates(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    u = await signup(client)
    created = (await client.post("/v1/api-keys", json={"name": "lu"}, headers=u.h)).json()
    hdr = {"X-API-Key": created["key"]}
    await client.get("/_test/whoami", headers=hdr)
    first = next(
        k for k in (await client.get("/v1/api-keys", headers=u.h)).json() if k["id"] == created["id"]
    )
    assert "last_used" in first
    clock.advance(120)
    try:
        await client.get("/_test/whoami", headers=hdr)
        later = next(
            k for k in (await client.get("/v1/api-keys", headers=u.h)).json() if k["id"] == created["id"]
        )
    finally:
        clock.reset()
    assert later["last_used"] > first["last_used"]


async def test_user_search(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    me = await signup(client, email=f"me-{tag}@search.test")
    made = sorted([f"zed{i:02d}_{tag}@search.test" for i in range(12)])
    for e in reversed(made):
        await signup(client, email=e)
    await signup(client, email=f"zedx1{tag}@search.test")  # '_' must not match any single char
    r = await client.get("/v1/users/search", params={"email": "zed0"}, headers=me.h)
    assert_error(r, 400, "invalid_request")
    r = await client.get("/v1/users/search", params={"email": "  zed"}, headers=me.h)
    assert_error(r, 400, "invalid_request")
    r = await client.get("/v1/users/search", params={"email": "a@"}, headers=me.h)
    assert_error(r, 400)
    r = await client.get("/v1/users/search", headers=me.h)
    assert_error(r, 400)
    # exact prefix with '@' in it
    r = await client.get("/v1/users/search", params={"email": f" ZED01_{tag}@sea "}, headers=me.h)
    assert r.status_code == 200 and [u["email"] for u in r.json()] == [made[1]]
    assert set(r.json()[0]) == {"user_id", "email", "verified"}
    # wildcard characters are literal: unescaped, these would match zedx1… and every zed…
    for pattern in (f"zed_1{tag}@", f"zed%{tag}@", f"ZED%_{tag}@"):
        r = await client.get("/v1/users/search", params={"email": pattern}, headers=me.h)
        assert r.status_code == 200 and r.json() == [], (pattern, r.json())
    r = await client.get("/v1/users/search", params={"email": f"zedx1{tag}@"}, headers=me.h)
    assert len(r.json()) == 1
    for pattern in (
        "%@%",
        "_@",
        "%@search.test",
        "zed__" + "@",
        "\\@",
        "'@' OR 1=1 --",
        "@%'; DROP TABLE users; --",
    ):
        r = await client.get("/v1/users/search", params={"email": pattern}, headers=me.h)
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json() == [], (pattern, r.json())
    # '@' alone plus 2 chars is enough: 10 results max, sorted, not team-restricted
    r = await client.get("/v1/users/search", params={"email": "zed"}, headers=me.h)
    assert r.status_code == 400
    r = await client.get("/v1/users/search", params={"email": "me-" + tag + "@"}, headers=me.h)
    assert [u["user_id"] for u in r.json()] == [me.user_id]
    # prefix with '@' matching many: use the domain-less trick via each local part
    results = []
    for e in made:
        rr = await client.get("/v1/users/search", params={"email": e[:-3]}, headers=me.h)
        results.extend(u["email"] for u in rr.json())
    assert results == made
    assert_error(await client.get("/v1/users/search", params={"email": "x" * 300 + "@"}, headers=me.h), 400)


async def test_user_search_limit_and_order(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:6]
    me = await signup(client)
    emails = [f"q@{tag}{i:02d}.lim" for i in range(13)]
    # same local part "q", different domains: "q@<tag>" matches all 13
    for e in reversed(emails):
        await signup(client, email=e)
    r = await client.get("/v1/users/search", params={"email": f"q@{tag}"}, headers=me.h)
    assert r.status_code == 200 and [u["email"] for u in r.json()] == emails[:10]


async def test_admin_byoc(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    admin = await signup(client, name="Plat")
    target = await signup(client, name="Tgt")
    path = f"/v1/admin/teams/{target.team_id}/byoc"
    assert_error(
        await client.put(path, json={"enabled": True}, headers=admin.h),
        403,
        "forbidden",
        "admin access required",
    )
    await make_admin(engine, admin)  # the DB flag counts, not the token
    assert (await client.put(path, json={"enabled": True}, headers=admin.h)).status_code == 204
    assert (await client.put(path, json={"enabled": True}, headers=admin.h)).status_code == 204
    assert (await client.get("/v1/teams", headers=target.h)).json()[0]["is_byoc"] is True
    assert_error(
        await client.put(path, json={"enabled": False}, headers=admin.h), 400, None, "cannot be disabled"
    )
    assert_error(await client.put(path, json={"enabled": "yes"}, headers=admin.h), 400)
    assert_error(await client.put(path, json={}, headers=admin.h), 400)
    missing = f"/v1/admin/teams/{ids.team_id(uuid.uuid4())}/byoc"
    assert_error(await client.put(missing, json={"enabled": True}, headers=admin.h), 404, "not_found")
    assert_error(
        await client.put("/v1/admin/teams/team-x/byoc", json={"enabled": True}, headers=admin.h), 400
    )
    gone = await signup(client)
    assert (await client.delete(f"/v1/teams/{gone.team_id}", headers=gone.h)).status_code == 204
    assert_error(
        await client.put(f"/v1/admin/teams/{gone.team_id}/byoc", json={"enabled": True}, headers=admin.h), 404
    )
    assert_error(await client.put(path, json={"enabled": True}), 401)
    # revoking admin in the DB takes effect on the next request
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE users SET is_admin = false WHERE email = :e"), {"e": admin.email})
    assert_error(await client.put(path, json={"enabled": True}, headers=admin.h), 403)


@pytest.mark.parametrize("who", ["owner", "admin", "member"])
async def test_api_keys_any_role(client: httpx.AsyncClient, who: str) -> None:
    owner = await signup(client)
    user = owner if who == "owner" else await add_member(client, owner, await signup(client), role=who)
    r = await client.post("/v1/api-keys", json={"name": who}, headers=user.h)
    assert r.status_code == 201
    assert (await client.get("/v1/api-keys", headers=user.h)).status_code == 200
    assert (await client.delete(f"/v1/api-keys/{r.json()['id']}", headers=user.h)).status_code == 204
