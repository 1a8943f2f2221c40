"""SPEC §2.4 team routes, §7.1 permission table, owner invariants, §7.3 soft delete, §7.4/§7.5."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.services import teams as teams_service

from .conftest import User, add_member, assert_error, signup, switch


@pytest.fixture
async def trio(client: httpx.AsyncClient) -> tuple[User, User, User]:
    """An owner's team with an admin and a member, each holding a JWT for that team."""
    owner = await signup(client, name="Owner")
    admin = await add_member(client, owner, await signup(client, name="Admin"), role="admin")
    member = await add_member(client, owner, await signup(client, name="Member"))
    return owner, admin, member


def tpath(u: User, suffix: str = "") -> str:
    return f"/v1/teams/{u.team_id}{suffix}"


async def test_list_and_create_teams(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    u = await signup(client, name="Lister")
    r = await client.post("/v1/teams", json={"name": "  Side-project @ACME's_1 "}, headers=u.h)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "Side-project @ACME's_1" and created["role"] == "owner"
    assert created["is_byoc"] is False and re.fullmatch(r"[0-9a-f]{6}-[0-9a-f]{6}", created["slug"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created["created_at"])
    r = await client.get("/v1/teams", headers=u.h)
    assert [t["id"] for t in r.json()] == [u.team_id, created["id"]]  # join order
    assert {t["role"] for t in r.json()} == {"owner"}
    async with engine.connect() as conn:
        is_default = (
            await conn.execute(
                text("SELECT is_default FROM users_teams WHERE team_id = :t"),
                {"t": ids.parse_id(ids.Kind.TEAM, created["id"])},
            )
        ).scalar()
    assert is_default is False


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "a" * 129,
        "bad/slash",
        "semi;colon",
        "<script>",
        "Zoë",
        "emoji 🚀",
        "tab\tname",
        "new\nline",
        "'; DROP TABLE teams; --",
    ],
)
async def test_team_name_validation(client: httpx.AsyncClient, name: str) -> None:
    u = await signup(client)
    assert_error(await client.post("/v1/teams", json={"name": name}, headers=u.h), 400, "invalid_request")
    assert_error(await client.patch(tpath(u), json={"name": name}, headers=u.h), 400, "invalid_request")


async def test_team_name_limits_ok(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    for name in ["a", "A" * 128, "x-y_z @ o'k"]:
        assert (await client.post("/v1/teams", json={"name": name}, headers=u.h)).status_code == 201


async def test_slugs_unique_and_immutable(client: httpx.AsyncClient) -> None:
    u = await signup(client)
    slugs = {u.team_id: None}
    r = await client.get(tpath(u), headers=u.h)
    slug = r.json()["team"]["slug"]
    assert (await client.patch(tpath(u), json={"name": "New name"}, headers=u.h)).status_code == 204
    assert (await client.get(tpath(u), headers=u.h)).json()["team"]["slug"] == slug
    # the PATCH body cannot carry a slug
    assert_error(await client.patch(tpath(u), json={"name": "x", "slug": "000000-000000"}, headers=u.h), 400)
    seen = {teams_service.new_slug() for _ in range(2000)}
    assert len(seen) == 2000 and all(re.fullmatch(r"[0-9a-f]{6}-[0-9a-f]{6}", s) for s in seen)
    del slugs


async def test_get_team_and_members(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, admin, member = trio
    for who in trio:
        r = await client.get(tpath(owner), headers=who.h)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["team"]["id"] == owner.team_id and set(body["team"]) == {
            "id",
            "name",
            "slug",
            "is_byoc",
            "created_at",
        }
        assert [m["role"] for m in body["members"]] == ["owner", "admin", "member"]
        assert [m["user_id"] for m in body["members"]] == [owner.user_id, admin.user_id, member.user_id]
        r2 = await client.get(tpath(owner, "/members"), headers=who.h)
        assert r2.json() == body["members"]
    m = body["members"][2]
    assert set(m) == {"user_id", "name", "email", "role", "joined_at"} and m["email"] == member.email


async def test_jwt_team_must_match_path(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, _, _ = trio
    other = await signup(client)
    for method, suffix, body in [
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("DELETE", "", None),
        ("GET", "/members", None),
        ("POST", "/members", {"email": owner.email}),
        ("PATCH", f"/members/{owner.user_id}", {"role": "admin"}),
        ("DELETE", f"/members/{owner.user_id}", None),
        ("POST", "/leave", None),
    ]:
        r = await client.request(method, tpath(owner, suffix), headers=other.h, json=body)
        assert_error(r, 403, "forbidden", "JWT team does not match requested team; use switch-team first")
        r = await client.request(method, f"/v1/teams/team-bad{suffix}", headers=other.h, json=body)
        assert_error(r, 400, "invalid_request", "invalid team ID")


async def test_rename_permissions(
    client: httpx.AsyncClient, trio: tuple[User, User, User], engine: AsyncEngine
) -> None:
    owner, admin, member = trio
    assert (await client.patch(tpath(owner), json={"name": "By Owner"}, headers=owner.h)).status_code == 204
    assert (await client.patch(tpath(owner), json={"name": "By Admin"}, headers=admin.h)).status_code == 204
    assert_error(
        await client.patch(tpath(owner), json={"name": "By Member"}, headers=member.h),
        403,
        "forbidden",
        "admin or owner role required",
    )
    assert (await client.get(tpath(owner), headers=member.h)).json()["team"]["name"] == "By Admin"
    async with engine.connect() as conn:
        meta = (
            await conn.execute(
                text(
                    "SELECT metadata FROM audit_logs WHERE action = 'rename' AND resource_id = :r "
                    "ORDER BY created_at DESC LIMIT 1"
                ),
                {"r": owner.team_id},
            )
        ).scalar()
    # Plus the caller's address and request id, which every audit row made in a request carries.
    assert meta.keys() == {"old_name", "new_name", "ip", "request_id"}
    assert (meta["old_name"], meta["new_name"]) == ("By Owner", "By Admin")


async def test_delete_only_owner(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, admin, member = trio
    for who in (admin, member):
        assert_error(await client.delete(tpath(owner), headers=who.h), 403, "forbidden")
    assert (await client.delete(tpath(owner), headers=owner.h)).status_code == 204


async def test_add_member_invites_and_the_invitee_decides(
    client: httpx.AsyncClient, trio: tuple[User, User, User]
) -> None:
    """Adding a member makes an invitation (services/team_invitations.py): nobody joins until
    they accept as themselves."""
    owner, admin, member = trio
    new1 = await signup(client, name="New1")
    new2 = await signup(client, name="New2")
    r = await client.post(
        tpath(owner, "/members"), json={"email": f"  {new1.email.upper()} "}, headers=owner.h
    )
    assert r.status_code == 201, r.text
    inv = r.json()
    assert set(inv) == {
        "id",
        "team_id",
        "team_name",
        "role",
        "email",
        "invited_by",
        "created_at",
        "expires_at",
    }
    assert inv["role"] == "member" and inv["email"] == new1.email and inv["team_id"] == owner.team_id
    assert inv["id"].startswith("inv-") and inv["invited_by"] == owner.email
    members = (await client.get(tpath(owner, "/members"), headers=owner.h)).json()
    assert new1.user_id not in [m["user_id"] for m in members]
    assert [i["id"] for i in (await client.get("/v1/invitations", headers=new1.h)).json()] == [inv["id"]]
    # An admin invites too, and may invite as admin; the owner sees both pending.
    r = await client.post(
        tpath(owner, "/members"), json={"email": new2.email, "role": "admin"}, headers=admin.h
    )
    assert r.status_code == 201 and r.json()["role"] == "admin", r.text
    pending = (await client.get(tpath(owner, "/invitations"), headers=owner.h)).json()
    assert [p["email"] for p in pending] == [new1.email, new2.email]
    assert_error(await client.get(tpath(owner, "/invitations"), headers=member.h), 403, "forbidden")
    # A second invite replaces the first: a new id, the old one dead.
    again = (await client.post(tpath(owner, "/members"), json={"email": new1.email}, headers=owner.h)).json()
    assert again["id"] != inv["id"]
    assert_error(await client.post(f"/v1/invitations/{inv['id']}/accept", headers=new1.h), 404, "not_found")
    # Accepting joins with the invitation's role; declining leaves nothing behind.
    r = await client.post(f"/v1/invitations/{again['id']}/accept", headers=new1.h)
    assert r.status_code == 200 and r.json()["id"] == owner.team_id and r.json()["role"] == "member", r.text
    r = await client.post(f"/v1/invitations/{pending[1]['id']}/decline", headers=new2.h)
    assert r.status_code == 204, r.text
    members = (await client.get(tpath(owner, "/members"), headers=owner.h)).json()
    assert [m["user_id"] for m in members][-1] == new1.user_id and new2.user_id not in str(members)
    assert (await client.get(tpath(owner, "/invitations"), headers=owner.h)).json() == []
    # Revoked: the invitee can no longer accept it.
    new3 = await signup(client, name="New3")
    third = (await client.post(tpath(owner, "/members"), json={"email": new3.email}, headers=owner.h)).json()
    assert (
        await client.delete(tpath(owner, f"/invitations/{third['id']}"), headers=admin.h)
    ).status_code == 204
    assert_error(await client.post(f"/v1/invitations/{third['id']}/accept", headers=new3.h), 404, "not_found")
    assert_error(await client.delete(tpath(owner, f"/invitations/{third['id']}"), headers=owner.h), 404)


async def test_add_member_rules(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, admin, member = trio
    assert_error(
        await client.post(
            tpath(owner, "/members"), json={"email": (await signup(client)).email}, headers=member.h
        ),
        403,
        "forbidden",
        "admin or owner role required",
    )
    assert_error(
        await client.post(tpath(owner, "/members"), json={"email": ""}, headers=owner.h),
        400,
        None,
        "email is required",
    )
    assert_error(
        await client.post(tpath(owner, "/members"), json={}, headers=owner.h), 400, None, "email is required"
    )
    assert_error(
        await client.post(tpath(owner, "/members"), json={"email": "ghost@nowhere.test"}, headers=owner.h),
        404,
        "not_found",
        "user not found: no account with that email",
    )
    for who, email in ((owner, member.email), (admin, owner.email)):
        assert_error(
            await client.post(tpath(owner, "/members"), json={"email": email}, headers=who.h),
            409,
            "already_member",
            "user is already a member",
        )
    # nobody is invited as owner
    assert_error(
        await client.post(
            tpath(owner, "/members"),
            json={"email": (await signup(client)).email, "role": "owner"},
            headers=owner.h,
        ),
        400,
        "invalid_request",
        "role must be 'admin' or 'member'",
    )


async def test_change_role_rules(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, admin, member = trio

    async def role(who: User, target: str, new: object) -> httpx.Response:
        return await client.patch(tpath(owner, f"/members/{target}"), json={"role": new}, headers=who.h)

    assert (await role(owner, member.user_id, "admin")).status_code == 204
    assert (await role(admin, member.user_id, "member")).status_code == 204
    # nobody can be promoted to owner, and the owner cannot be demoted
    for new in ("owner", "superuser", ""):
        assert_error(await role(owner, member.user_id, new), 400, "invalid_request")
    assert_error(await role(owner, owner.user_id, "admin"), 403, "forbidden")
    assert_error(await role(admin, owner.user_id, "member"), 403, "forbidden")
    # a bad role is a 400 even for a caller who could not change roles (checked first)
    assert_error(await role(member, admin.user_id, "owner"), 400, "invalid_request")
    assert_error(
        await role(member, admin.user_id, "member"), 403, "forbidden", "admin or owner role required"
    )
    assert_error(await role(owner, "usr-bad", "admin"), 400, "invalid_request", "invalid user ID")
    stranger = await signup(client)
    assert_error(await role(owner, stranger.user_id, "admin"), 404, "not_found")
    members = (await client.get(tpath(owner, "/members"), headers=owner.h)).json()
    assert [m["role"] for m in members] == ["owner", "admin", "member"]


async def test_remove_member_rules(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, admin, member = trio
    assert_error(
        await client.delete(tpath(owner, f"/members/{admin.user_id}"), headers=member.h), 403, "forbidden"
    )
    assert_error(
        await client.delete(tpath(owner, f"/members/{owner.user_id}"), headers=admin.h), 403, "forbidden"
    )
    assert_error(
        await client.delete(tpath(owner, f"/members/{owner.user_id}"), headers=owner.h), 403, "forbidden"
    )
    assert_error(await client.delete(tpath(owner, "/members/usr-x"), headers=owner.h), 400, "invalid_request")
    stranger = await signup(client)
    assert_error(
        await client.delete(tpath(owner, f"/members/{stranger.user_id}"), headers=owner.h), 404, "not_found"
    )
    assert (
        await client.delete(tpath(owner, f"/members/{member.user_id}"), headers=admin.h)
    ).status_code == 204
    # an admin may remove another admin, and themselves
    admin2 = await add_member(client, owner, await signup(client, name="Admin2"), role="admin")
    assert (
        await client.delete(tpath(owner, f"/members/{admin2.user_id}"), headers=admin.h)
    ).status_code == 204
    assert (
        await client.delete(tpath(owner, f"/members/{admin.user_id}"), headers=admin.h)
    ).status_code == 204
    members = (await client.get(tpath(owner, "/members"), headers=owner.h)).json()
    assert [m["user_id"] for m in members] == [owner.user_id]


async def test_leave_rules(client: httpx.AsyncClient, trio: tuple[User, User, User]) -> None:
    owner, admin, member = trio
    assert_error(
        await client.post(tpath(owner, "/leave"), headers=owner.h),
        403,
        "forbidden",
        "delete the team instead",
    )
    assert (await client.post(tpath(owner, "/leave"), headers=member.h)).status_code == 204
    assert (await client.post(tpath(owner, "/leave"), headers=admin.h)).status_code == 204
    # after leaving: not a member any more
    assert_error(
        await client.post(tpath(owner, "/leave"), headers=member.h),
        403,
        "forbidden",
        "not a member of this team",
    )


async def test_removed_member_loses_access_on_next_request(
    client: httpx.AsyncClient, trio: tuple[User, User, User]
) -> None:
    owner, _, member = trio
    key = (await client.post("/v1/api-keys", json={}, headers=member.h)).json()["key"]
    assert (await client.get(tpath(owner), headers=member.h)).status_code == 200
    assert (await client.get("/v1/api-keys", headers=member.h)).status_code == 200
    assert (await client.get("/_test/whoami", headers=member.h)).status_code == 200
    assert (
        await client.delete(tpath(owner, f"/members/{member.user_id}"), headers=owner.h)
    ).status_code == 204
    assert_error(
        await client.get(tpath(owner), headers=member.h), 403, "forbidden", "not a member of this team"
    )
    assert_error(
        await client.get("/v1/api-keys", headers=member.h), 403, "forbidden", "not a member of this team"
    )
    assert_error(await client.get("/_test/whoami", headers=member.h), 403, "forbidden")
    assert_error(await client.get("/v1/users/search?email=abc@", headers=member.h), 403)
    # the team's API keys (even one the removed member made) belong to the team and keep working
    assert (await client.get("/_test/whoami", headers={"X-API-Key": key})).status_code == 200
    # the member can still see their own teams and switch back to their own team
    teams = (await client.get("/v1/teams", headers=member.h)).json()
    assert owner.team_id not in [t["id"] for t in teams]
    back = await switch(client, member, teams[0]["id"])
    assert (await client.get("/v1/api-keys", headers=back.h)).status_code == 200


async def test_demoted_admin_loses_admin_rights_on_next_request(
    client: httpx.AsyncClient, trio: tuple[User, User, User]
) -> None:
    owner, admin, member = trio
    assert (await client.patch(tpath(owner), json={"name": "ok"}, headers=admin.h)).status_code == 204
    r = await client.patch(
        tpath(owner, f"/members/{admin.user_id}"), json={"role": "member"}, headers=owner.h
    )
    assert r.status_code == 204
    # the JWT still says "admin"; the DB says member
    assert_error(await client.patch(tpath(owner), json={"name": "nope"}, headers=admin.h), 403, "forbidden")
    del member


async def test_soft_delete_cancels_the_teams_builds_and_writes_no_more_versions(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Session 37: the delete cancels the team's builds as a cancel does (a queued one failed,
    a running one marked for the replica running it) and drops its build cache; afterwards no
    build can be submitted for it nor write a version (a build ending after the delete)."""
    import types
    from typing import Any, cast

    from warren.cp.db.engine import transaction
    from warren.cp.services import template_builds as builds
    from warren.cp.services import templates as tpl
    from warren.cp.services.template_spec import parse
    from warren.errors import NotFound

    owner = await signup(client, name="Builder")
    extra = (await client.post("/v1/teams", json={"name": "Building"}, headers=owner.h)).json()
    owner_d = await switch(client, owner, extra["id"])
    tid = ids.parse_id(ids.Kind.TEAM, extra["id"])
    rows = {st: uuid.uuid4() for st in ("queued", "running", "ready")}
    async with engine.begin() as conn:
        for st, b in rows.items():
            await conn.execute(
                text(
                    "INSERT INTO template_builds (id, team_id, name, spec, status) "
                    "VALUES (:i, :t, 'x', '', :s)"
                ),
                {"i": b, "t": tid, "s": st},
            )
        await conn.execute(
            text("INSERT INTO build_cache (team_id, key, layer) VALUES (:t, 'k', 'l')"), {"t": tid}
        )
    assert (await client.delete(f"/v1/teams/{extra['id']}", headers=owner_d.h)).status_code == 204

    async with engine.connect() as conn:
        got = {
            r.id: (r.status, r.error, r.finished_at is not None)
            for r in await conn.execute(
                text("SELECT id, status, error, finished_at FROM template_builds WHERE team_id = :t"),
                {"t": tid},
            )
        }
        cache = (
            await conn.execute(text("SELECT count(*) FROM build_cache WHERE team_id = :t"), {"t": tid})
        ).scalar()
    assert got == {
        rows["queued"]: ("failed", builds.TEAM_DELETED, True),
        rows["running"]: ("running", builds.TEAM_DELETED, False),  # its replica fails it once stopped
        rows["ready"]: ("ready", "", False),
    }
    assert cache == 0
    with pytest.raises(NotFound):
        async with transaction(engine) as conn:
            await tpl.insert_version(
                conn, team_id=tid, name="x", base="minimal", layers=[], config=parse("FROM minimal\n").config,
                tags=[], source="build", size_bytes=0,
            )  # fmt: skip
    runner = cast(Any, types.SimpleNamespace(settings=None))  # refused before it is asked anything
    with pytest.raises(NotFound):
        await builds.start_build(
            engine, runner, tid, builds.BuildRequest(name="y", spec="FROM minimal\n"), None
        )


async def test_soft_delete_effects(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    owner = await signup(client, name="Deleter")
    extra = (await client.post("/v1/teams", json={"name": "Doomed"}, headers=owner.h)).json()
    owner_d = await switch(client, owner, extra["id"])
    mate = await add_member(client, owner_d, await signup(client, name="Mate"))
    key = (await client.post("/v1/api-keys", json={"name": "doomed"}, headers=owner_d.h)).json()["key"]
    tid = ids.parse_id(ids.Kind.TEAM, extra["id"])
    host = uuid.uuid4()
    statuses = ["running", "paused", "starting", "pending", "error", "stopped", "missing"]
    async with engine.begin() as conn:
        for st in statuses:
            await conn.execute(
                text("INSERT INTO sandboxes (id, team_id, host_id, status) VALUES (:i, :t, :h, :s)"),
                {"i": uuid.uuid4(), "t": tid, "h": host, "s": st},
            )
        await conn.execute(
            text("INSERT INTO templates (id, name, type, team_id) VALUES (:i, 'snap1', 'snapshot', :t)"),
            {"i": uuid.uuid4(), "t": tid},
        )
    slug = (await client.get(f"/v1/teams/{extra['id']}", headers=owner_d.h)).json()["team"]["slug"]

    # The sandboxes' host has no row (it was never registered) and the snapshot no host: the
    # host-side clean-up finds nothing to reach, and the delete goes on (SPEC §7.3). Destroying
    # on a host: test_sandbox_api.py::test_team_delete_destroys_its_sandboxes_on_their_host.
    assert_error(await client.delete(f"/v1/teams/{extra['id']}", headers=mate.h), 403)
    assert (await client.delete(f"/v1/teams/{extra['id']}", headers=owner_d.h)).status_code == 204

    async with engine.connect() as conn:
        rows = dict(
            (
                await conn.execute(
                    text("SELECT status, count(*) FROM sandboxes WHERE team_id = :t GROUP BY status"),
                    {"t": tid},
                )
            ).all()
        )
        tpl = (
            await conn.execute(text("SELECT count(*) FROM templates WHERE team_id = :t"), {"t": tid})
        ).scalar()
        keys = (
            await conn.execute(text("SELECT count(*) FROM team_api_keys WHERE team_id = :t"), {"t": tid})
        ).scalar()
        members = (
            await conn.execute(text("SELECT count(*) FROM users_teams WHERE team_id = :t"), {"t": tid})
        ).scalar()
        deleted_at = (
            await conn.execute(text("SELECT deleted_at FROM teams WHERE id = :t"), {"t": tid})
        ).scalar()
    assert rows == {"stopped": 6, "error": 1}
    assert tpl == 0 and keys == 1 and members == 2 and deleted_at is not None

    # excluded everywhere (§7.3): listing, get (404), switch (404), API keys and JWTs refused
    assert extra["id"] not in [t["id"] for t in (await client.get("/v1/teams", headers=owner.h)).json()]
    assert_error(await client.get(f"/v1/teams/{extra['id']}", headers=owner_d.h), 404, "not_found")
    assert_error(await client.get(f"/v1/teams/{extra['id']}/members", headers=mate.h), 404, "not_found")
    assert_error(
        await client.post(f"/v1/teams/{extra['id']}/members", json={"email": owner.email}, headers=owner_d.h),
        404,
    )
    assert_error(
        await client.post("/v1/auth/switch-team", json={"team_id": extra["id"]}, headers=owner.h), 404
    )
    assert_error(await client.get("/_test/whoami", headers={"X-API-Key": key}), 401, None, "invalid API key")
    assert_error(await client.get("/_test/whoami", headers=owner_d.h), 401, "unauthorized")
    assert_error(await client.get("/v1/api-keys", headers=mate.h), 401, "unauthorized")
    assert_error(await client.delete(f"/v1/teams/{extra['id']}", headers=owner_d.h), 404)
    # the mate logs in to their own default team
    r = await client.post("/v1/auth/login", json={"email": mate.email, "password": mate.password})
    assert r.json()["team_id"] != extra["id"]
    # the slug stays reserved
    async with engine.connect() as conn:
        assert (
            await conn.execute(text("SELECT count(*) FROM teams WHERE slug = :s"), {"s": slug})
        ).scalar() == 1


async def test_user_without_live_team_can_recover(client: httpx.AsyncClient) -> None:
    """Deleting your last team leaves a JWT that can list, create and switch teams (docs/auth.md)."""
    u = await signup(client, name="Solo")
    assert (await client.delete(tpath(u), headers=u.h)).status_code == 204
    assert (await client.get("/v1/teams", headers=u.h)).json() == []
    assert_error(await client.get("/v1/api-keys", headers=u.h), 401)
    r = await client.post("/v1/teams", json={"name": "Fresh start"}, headers=u.h)
    assert r.status_code == 201
    fresh = await switch(client, u, r.json()["id"])
    assert (await client.get("/v1/api-keys", headers=fresh.h)).status_code == 200
    r = await client.post("/v1/auth/login", json={"email": u.email, "password": u.password})
    assert r.status_code == 200 and r.json()["team_id"] == fresh.team_id


async def test_invitations_are_audited_in_the_team_log(client: httpx.AsyncClient) -> None:
    """invite, accept, decline, revoke: one admin-scope record each in the inviting team's log,
    the invitee the actor of their answers."""
    owner, joiner, decliner, revoked = [await signup(client, name=n) for n in ("O", "J", "D", "R")]
    ids_ = {}
    for who in (joiner, decliner, revoked):
        r = await client.post(tpath(owner, "/members"), json={"email": who.email}, headers=owner.h)
        ids_[who.user_id] = r.json()["id"]
    assert (
        await client.post(f"/v1/invitations/{ids_[joiner.user_id]}/accept", headers=joiner.h)
    ).status_code == 200
    assert (
        await client.post(f"/v1/invitations/{ids_[decliner.user_id]}/decline", headers=decliner.h)
    ).status_code == 204
    inv = ids_[revoked.user_id]
    assert (await client.delete(tpath(owner, f"/invitations/{inv}"), headers=owner.h)).status_code == 204
    r = await client.get("/v1/audit", params={"resource_type": "invitation"}, headers=owner.h)
    assert r.status_code == 200, r.text
    seen = {(i["action"], i["resource_id"], i["actor"]["id"]) for i in r.json()["items"]}
    expected = {("invite", i, owner.user_id) for i in ids_.values()} | {
        ("accept", ids_[joiner.user_id], joiner.user_id),
        ("decline", ids_[decliner.user_id], decliner.user_id),
        ("revoke", inv, owner.user_id),
    }
    assert seen == expected, seen
    assert {i["scope"] for i in r.json()["items"]} == {"admin"}
