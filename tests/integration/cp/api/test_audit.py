"""GET /v1/audit (issue 18 item 3): who sees which records, the filters, the pages, and that
no route changes a record."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock

from .conftest import User, add_member, assert_error, make_admin, signup


async def _keys(client: httpx.AsyncClient, user: User, n: int) -> list[str]:
    out = []
    for i in range(n):
        headers = {**user.h, "X-Request-Id": f"create-key-{i}"}
        r = await client.post("/v1/api-keys", json={"name": f"k{i}"}, headers=headers)
        assert r.status_code == 201, r.text
        out.append(r.json()["id"])
        clock.advance(1)  # distinct times, so `since` can split them
    return out


async def _all(client: httpx.AsyncClient, user: User, **params: str | int) -> list[dict[str, object]]:
    r = await client.get("/v1/audit", params=params, headers=user.h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.get("next_cursor") is None, "more than one page"
    items: list[dict[str, object]] = body["items"]
    return items


async def test_owners_see_their_team_and_admins_see_all(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    alice, bob = await signup(client, name="Alice"), await signup(client, name="Bob")
    try:
        [a_key] = await _keys(client, alice, 1)
        [b_key] = await _keys(client, bob, 1)
    finally:
        clock.reset()
    headers = {**alice.h, "X-Request-Id": "audit-req-1"}
    r = await client.get("/v1/audit", params={"resource_type": "api_key"}, headers=headers)
    mine = r.json()["items"]
    assert [i["resource_id"] for i in mine] == [a_key]
    record = mine[0]
    assert record["team_id"] == alice.team_id and record["status"] == "success"
    assert record["actor"] == {"type": "user", "id": alice.user_id, "name": "Alice"}
    assert record["action"] == "create" and record["resource_type"] == "api_key"
    assert record["ip"] == "127.0.0.1" and record["id"].startswith("log-")
    assert record["request_id"] == "create-key-0"  # the call that made it, not this read
    assert_error(await client.get("/v1/audit", params={"team_id": bob.team_id}, headers=alice.h), 403)

    # A member of Alice's team, or her API key, may not read it; an admin member may.
    member = await add_member(client, alice, await signup(client, name="Mem"))
    assert_error(await client.get("/v1/audit", headers=member.h), 403)
    key = (await client.post("/v1/api-keys", json={"name": "x"}, headers=alice.h)).json()["key"]
    assert (await client.get("/v1/audit", headers={"X-API-Key": key})).status_code == 401
    assert (await client.get("/v1/audit")).status_code == 401
    manager = await add_member(client, alice, await signup(client, name="Mgr"), role="admin")
    seen = await _all(client, manager, resource_type="api_key")
    assert {i["team_id"] for i in seen} == {alice.team_id} and a_key in {i["resource_id"] for i in seen}

    # A platform admin sees both teams, and narrows to one with team_id.
    root = await signup(client, name="Root")
    await make_admin(engine, root)
    both = {i["resource_id"] for i in await _all(client, root, resource_type="api_key", limit=200)}
    assert {a_key, b_key} <= both
    only_bob = await _all(client, root, team_id=bob.team_id)
    assert {i["team_id"] for i in only_bob} == {bob.team_id} and b_key in {i["resource_id"] for i in only_bob}


async def test_filters(client: httpx.AsyncClient) -> None:
    owner = await signup(client, name="Filters")
    try:
        keys = await _keys(client, owner, 3)
        r = await client.delete(f"/v1/api-keys/{keys[0]}", headers=owner.h)
        assert r.status_code == 204
    finally:
        clock.reset()
    assert [i["resource_id"] for i in await _all(client, owner, action="revoke")] == [keys[0]]
    assert len(await _all(client, owner, resource_type="api_key", action="create")) == 3
    assert [i["action"] for i in await _all(client, owner, resource_id=keys[0])] == ["revoke", "create"]
    # Four key changes and the signup.
    assert len(await _all(client, owner, actor=owner.user_id)) == 5
    assert len(await _all(client, owner, actor="user")) == 5
    assert await _all(client, owner, actor="system") == []
    # since is inclusive, until exclusive: the second key was made one second after the first.
    created = {i["resource_id"]: i["created_at"] for i in await _all(client, owner, action="create")}
    later = await _all(client, owner, action="create", since=str(created[keys[1]]))
    assert {i["resource_id"] for i in later} == {keys[1], keys[2]}
    earlier = await _all(client, owner, action="create", until=str(created[keys[1]]))
    assert {i["resource_id"] for i in earlier} == {keys[0]}
    for bad in ({"limit": 0}, {"limit": 201}, {"cursor": "not-a-cursor"}, {"since": "yesterday"}):
        assert_error(await client.get("/v1/audit", params=bad, headers=owner.h), 400)
    r = await client.get("/v1/audit", params={"action": "x" * 201}, headers=owner.h)
    assert_error(r, 400)


async def test_pages_cover_every_record_once(client: httpx.AsyncClient) -> None:
    owner = await signup(client, name="Pages")
    try:
        keys = await _keys(client, owner, 5)
    finally:
        clock.reset()
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2, "resource_type": "api_key"}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/v1/audit", params=params, headers=owner.h)).json()
        seen += [i["resource_id"] for i in body["items"]]
        pages += 1
        cursor = body.get("next_cursor")
        if not cursor:
            break
    assert seen == list(reversed(keys)) and pages == 3  # newest first, each once


async def test_no_route_changes_a_record(client: httpx.AsyncClient) -> None:
    owner = await signup(client, name="ReadOnly")
    try:
        await _keys(client, owner, 1)
    finally:
        clock.reset()
    record = (await _all(client, owner))[0]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/v1/audit", f"/v1/audit/{record['id']}"):
            r = await client.request(method, path, json={"status": "error"}, headers=owner.h)
            assert r.status_code in (404, 405), (method, path, r.status_code)
    assert (await _all(client, owner))[0] == record
    schema = (await client.get("/openapi.json")).json()
    audit_paths = {p: set(ops) for p, ops in schema["paths"].items() if p.startswith("/v1/audit")}
    assert audit_paths == {"/v1/audit": {"get"}}


async def test_control_plane_changes_are_recorded(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The calls audited in issue 18 beyond docs/spec.md §9.1's list: signup, team create and
    delete, BYOC, host tags and registration tokens."""
    root = await signup(client, name="Auditor")
    await make_admin(engine, root)
    [signed_up] = await _all(client, root, team_id=root.team_id, resource_type="user")
    assert signed_up["action"] == "signup" and signed_up["actor"]["id"] == root.user_id

    doomed = await signup(client, name="Doomed")
    assert (
        await client.put(f"/v1/admin/teams/{doomed.team_id}/byoc", json={"enabled": True}, headers=root.h)
    ).status_code == 204
    r = await client.post("/v1/hosts", json={"type": "byoc", "team_id": doomed.team_id}, headers=root.h)
    assert r.status_code == 201, r.text
    host_id = r.json()["host"]["id"]
    assert (
        await client.post(f"/v1/hosts/{host_id}/tags", json={"tag": "gpu"}, headers=root.h)
    ).status_code < 300
    assert (await client.delete(f"/v1/hosts/{host_id}/tags/gpu", headers=root.h)).status_code < 300
    assert (await client.post(f"/v1/hosts/{host_id}/token", headers=root.h)).status_code < 300
    r = await client.post("/v1/teams", json={"name": "Side team"}, headers=doomed.h)
    assert r.status_code == 201, r.text
    side = r.json()["id"]
    assert (await client.delete(f"/v1/teams/{doomed.team_id}", headers=doomed.h)).status_code == 204

    actions = [(i["resource_type"], i["action"]) for i in await _all(client, root, team_id=doomed.team_id)]
    assert actions[0] == ("team", "delete") and actions[-1] == ("user", "signup")
    for change in (("team", "enable_byoc"), ("host", "create"), ("host", "add_tag"), ("host", "remove_tag"),
                   ("host", "regenerate_token")):  # fmt: skip
        assert change in actions, (change, actions)
    [created] = await _all(client, root, team_id=side)
    assert (created["action"], created["resource_id"], created["actor"]["id"]) == (
        "create",
        side,
        doomed.user_id,
    )


async def test_failed_changes_are_recorded_with_their_result(client: httpx.AsyncClient) -> None:
    owner = await signup(client, name="FailOwner")
    member = await add_member(client, owner, await signup(client, name="FailMember"))
    r = await client.patch(f"/v1/teams/{owner.team_id}", json={"name": "Nope"}, headers=member.h)
    assert r.status_code == 403
    bad_key = "key-" + "0" * 25
    assert (await client.delete(f"/v1/api-keys/{bad_key}x", headers=owner.h)).status_code == 400
    # Not recorded: reads, the sandbox data plane, and callers who did not authenticate.
    assert (
        await client.get(f"/v1/teams/{owner.team_id}/members/nobody", headers=member.h)
    ).status_code >= 400
    r = await client.post("/v1/sandboxes/sb-missing/exec", json={"cmd": "true"}, headers=owner.h)
    assert r.status_code in (400, 404)
    assert (await client.patch(f"/v1/teams/{owner.team_id}", json={"name": "x"})).status_code == 401

    failed = await _all(client, owner, action="failed")
    assert [(f["actor"]["id"], f["status"], f["metadata"]["http_status"]) for f in failed] == [
        (owner.user_id, "warning", 400),
        (member.user_id, "warning", 403),
    ]
    denied = failed[1]
    assert denied["resource_type"] == "request" and denied["resource_id"] == owner.team_id
    assert denied["metadata"]["method"] == "PATCH" and denied["metadata"]["route"] == "/v1/teams/{team_id}"
    assert denied["ip"] == "127.0.0.1" and denied["team_id"] == owner.team_id
