"""Hosts API against a real control plane and database, with registration done over HTTP the way
an agent does it (the real-agent scenarios are in test_multihost.py)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.harness.cp import InProcessCP, User, set_byoc, sql
from warren.cp.security.ca import fingerprint_pem
from warren.cp.services import host_link


async def register(cp: InProcessCP, token: str, address: str = "127.0.0.9:50051") -> httpx.Response:
    return await cp.http.post(
        "/v1/hosts/register",
        json={
            "token": token,
            "address": address,
            "arch": "amd64",
            "cpu_cores": 2,
            "memory_mb": 1024,
            "disk_gb": 10,
        },
    )


async def test_create_requires_admin_for_regular_and_byoc_rights(cp: InProcessCP) -> None:
    admin, owner, outsider = await cp.signup(admin=True), await cp.signup(), await cp.signup()
    host_id, token = await admin.create_host()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    r = await owner.req("POST", "/v1/hosts", json={"type": "regular"})
    assert r.status_code == 403
    r = await owner.req("POST", "/v1/hosts", json={"type": "byoc", "team_id": owner.team_id})
    assert r.status_code == 403 and "BYOC is not enabled" in r.json()["error"]["message"]
    r = await owner.req("POST", "/v1/hosts", json={"type": "byoc"})
    assert r.status_code == 400
    r = await owner.req("POST", "/v1/hosts", json={"type": "weird"})
    assert r.status_code == 400
    await set_byoc(admin, owner.team_id)
    byoc_id, _ = await owner.create_host("byoc", owner.team_id)
    r = await outsider.req("POST", "/v1/hosts", json={"type": "byoc", "team_id": owner.team_id})
    assert r.status_code == 403
    # Only the hash is stored.
    rows = await sql(cp, "SELECT token_hash FROM host_tokens")
    assert all(row[0] != token for row in rows)

    # Visibility: outsiders get 404 for every verb; the admin sees everything with team names.
    for method, path in [
        ("GET", f"/v1/hosts/{byoc_id}"),
        ("DELETE", f"/v1/hosts/{byoc_id}"),
        ("GET", f"/v1/hosts/{byoc_id}/tags"),
        ("POST", f"/v1/hosts/{byoc_id}/token"),
        ("GET", f"/v1/hosts/{byoc_id}/delete-preview"),
        ("GET", f"/v1/hosts/{host_id}"),
        ("DELETE", f"/v1/hosts/{host_id}"),
    ]:
        kw: dict[str, Any] = {}
        r = await outsider.req(method, path, **kw)
        assert r.status_code == 404, (method, path, r.text)
    r = await outsider.req("POST", f"/v1/hosts/{byoc_id}/tags", json={"tag": "x"})
    assert r.status_code == 404
    assert (await outsider.req("GET", "/v1/hosts")).json() == []
    owner_list = (await owner.req("GET", "/v1/hosts")).json()
    assert [h["id"] for h in owner_list] == [byoc_id]
    admin_list = (await admin.req("GET", "/v1/hosts")).json()
    assert [h["id"] for h in admin_list][:2] == [byoc_id, host_id]  # newest first
    assert admin_list[0]["team_name"] and "team_name" not in owner_list[0]
    assert admin_list[1]["status"] == "pending" and "address" not in admin_list[1]
    assert (await admin.req("GET", "/v1/hosts/nope")).status_code == 400


async def test_tags(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    host_id, _ = await admin.create_host()
    for tag in ("gpu", "eu", "gpu"):
        assert (await admin.req("POST", f"/v1/hosts/{host_id}/tags", json={"tag": tag})).status_code == 204
    assert (await admin.req("GET", f"/v1/hosts/{host_id}/tags")).json() == ["eu", "gpu"]
    assert (await admin.req("POST", f"/v1/hosts/{host_id}/tags", json={"tag": " "})).status_code == 400
    assert (await admin.req("DELETE", f"/v1/hosts/{host_id}/tags/eu")).status_code == 204
    assert (await admin.req("DELETE", f"/v1/hosts/{host_id}/tags/eu")).status_code == 204
    assert (await admin.req("GET", f"/v1/hosts/{host_id}/tags")).json() == ["gpu"]


async def test_registration_token_is_single_use(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    host_id, token = await admin.create_host()
    # An address the CP could not dial is refused before the token is spent.
    for bad in ("127.0.0.9", "127.0.0.9:0", "127.0.0.9:70000", "[::1", "[nope]:1", "a b:1", ":50051"):
        r = await register(cp, token, bad)
        assert r.status_code == 400 and "invalid address" in r.json()["error"]["message"], (bad, r.text)
    r = await register(cp, token)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["host"]["id"] == host_id and body["host"]["status"] == "online"
    assert body["host"]["address"] == "127.0.0.9:50051" and body["host"]["cpu_cores"] == 2
    cert = x509.load_pem_x509_certificate(body["cert_pem"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host_id in san.get_values_for_type(x509.DNSName)
    fp = await sql(
        cp, "SELECT cert_fingerprint, cert_expires_at FROM hosts WHERE address = '127.0.0.9:50051'"
    )
    assert fp[0][0] == fingerprint_pem(body["cert_pem"]) and fp[0][1] is not None
    r = await register(cp, token)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # A registered host takes no new token.
    r = await admin.req("POST", f"/v1/hosts/{host_id}/token")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    assert (await register(cp, "")).status_code == 400
    assert (await cp.http.post("/v1/hosts/register", json={"token": "x"})).status_code == 400


async def test_registration_token_expires_after_one_hour(cp: InProcessCP, fake_clock: Any) -> None:
    admin = await cp.signup(admin=True)
    host_id, token = await admin.create_host()
    fake_clock.advance(3601)
    r = await register(cp, token)
    assert r.status_code == 401
    # A pending host can get a fresh token, which works; the old one stays dead.
    r = await admin.req("POST", f"/v1/hosts/{host_id}/token")
    assert r.status_code == 201
    fresh = r.json()["registration_token"]
    assert (await register(cp, token)).status_code == 401
    assert (await register(cp, fresh)).status_code == 201


async def test_regenerated_token_supersedes_the_old_one(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    host_id, old = await admin.create_host()
    new = (await admin.req("POST", f"/v1/hosts/{host_id}/token")).json()["registration_token"]
    assert (await register(cp, old)).status_code == 401
    assert (await register(cp, new)).status_code == 201


async def _registered(cp: InProcessCP, admin: User, address: str) -> tuple[str, dict[str, Any]]:
    host_id, token = await admin.create_host()
    r = await register(cp, token, address)
    assert r.status_code == 201
    return host_id, r.json()


async def test_heartbeat_identity(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    a, creds_a = await _registered(cp, admin, "127.0.0.9:1")
    b, creds_b = await _registered(cp, admin, "127.0.0.9:2")
    ok = await cp.http.post(f"/v1/hosts/{a}/heartbeat", headers={"X-Host-Token": creds_a["token"]})
    assert ok.status_code == 204
    other = await cp.http.post(f"/v1/hosts/{a}/heartbeat", headers={"X-Host-Token": creds_b["token"]})
    assert other.status_code == 403 and other.json()["error"]["message"] == "host ID mismatch"
    assert (await cp.http.post(f"/v1/hosts/{a}/heartbeat")).status_code == 401
    user_jwt = await cp.http.post(f"/v1/hosts/{a}/heartbeat", headers={"X-Host-Token": admin.token})
    assert user_jwt.status_code == 401
    # A user JWT is not a host JWT and vice versa.
    assert (
        await cp.http.get("/v1/hosts", headers={"Authorization": f"Bearer {creds_a['token']}"})
    ).status_code == 401
    # unreachable -> online on a beat
    await sql(cp, "UPDATE hosts SET status = 'unreachable' WHERE address = '127.0.0.9:2'")
    assert (
        await cp.http.post(f"/v1/hosts/{b}/heartbeat", headers={"X-Host-Token": creds_b["token"]})
    ).status_code == 204
    assert (await admin.req("GET", f"/v1/hosts/{b}")).json()["status"] == "online"
    # Deleted host -> 404.
    assert (await admin.req("DELETE", f"/v1/hosts/{b}?force=true")).status_code == 204
    gone = await cp.http.post(f"/v1/hosts/{b}/heartbeat", headers={"X-Host-Token": creds_b["token"]})
    assert gone.status_code == 404


async def test_refresh_rotates_issue_then_revoke(cp: InProcessCP, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = await cp.signup(admin=True)
    host_id, creds = await _registered(cp, admin, "127.0.0.9:3")
    r = await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["refresh_token"] != creds["refresh_token"] and new["host"]["id"] == host_id
    assert new["cert_pem"] != creds["cert_pem"]
    # The old token is revoked: 401, not 400.
    r = await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert (await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": "0" * 64})).status_code == 401
    assert (await cp.http.post("/v1/hosts/auth/refresh", json={})).status_code == 400

    # A crash between issuing the new token and revoking the old one leaves the old one valid.
    async def crash(*_: Any) -> None:
        raise RuntimeError("injected crash between issue and revoke")

    monkeypatch.setattr(host_link, "_revoke_refresh_token", crash)
    r = await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert r.status_code == 500
    monkeypatch.undo()
    # Issue came first and was committed on its own: the host now holds TWO valid tokens (the
    # one it still has, and the one it never received). Revoke-then-issue would leave one.
    valid = await sql(
        cp,
        "SELECT count(*) FROM host_refresh_tokens t JOIN hosts h ON h.id = t.host_id "
        "WHERE h.address = '127.0.0.9:3' AND t.revoked_at IS NULL AND t.expires_at > now()",
    )
    assert valid[0][0] == 2
    r = await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert r.status_code == 200
    # Expired refresh tokens are refused.
    await sql(cp, "UPDATE host_refresh_tokens SET expires_at = now() - interval '1 second'")
    assert (
        await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": r.json()["refresh_token"]})
    ).status_code == 401


async def test_delete_refuses_with_active_sandboxes_and_lists_exactly_them(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    owner = await cp.signup()
    await set_byoc(admin, owner.team_id)
    host_id, token = await owner.create_host("byoc", owner.team_id)
    # Never registered: no address, so a force delete has no agent to call.
    hid = (await sql(cp, "SELECT id FROM hosts ORDER BY created_at DESC LIMIT 1"))[0][0]
    tid = (await sql(cp, "SELECT team_id FROM hosts WHERE id = :id", id=hid))[0][0]
    from warren import ids

    made = {}
    for status in ("pending", "starting", "running", "missing", "paused", "stopped", "error"):
        u = ids.new_uuid()
        await sql(
            cp,
            "INSERT INTO sandboxes (id, team_id, host_id, status) VALUES (:id, :t, :h, :s)",
            id=u,
            t=tid,
            h=hid,
            s=status,
        )
        made[status] = ids.sandbox_id(u)
    active = sorted(made[s] for s in ("pending", "starting", "running", "missing"))
    member = await cp.signup()
    r = await owner.req("GET", f"/v1/hosts/{host_id}/delete-preview")
    assert r.status_code == 200 and sorted(r.json()["sandbox_ids"]) == active
    r = await owner.req("DELETE", f"/v1/hosts/{host_id}")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "has_active_sandboxes" and sorted(err["sandbox_ids"]) == active
    # The refused delete drained the host only for its check: its status is back as it was.
    assert (await sql(cp, "SELECT status FROM hosts WHERE id = :id", id=hid))[0][0] == "pending"
    assert (await member.req("DELETE", f"/v1/hosts/{host_id}?force=true")).status_code == 404
    r = await owner.req("DELETE", f"/v1/hosts/{host_id}?force=true")
    assert r.status_code == 204
    statuses = dict(
        await sql(cp, "SELECT status, count(*) FROM sandboxes WHERE host_id = :h GROUP BY status", h=hid)
    )
    assert statuses == {"stopped": 6, "error": 1}
    # The five it stopped say why; the two that had ended before keep what they had (none).
    q = "SELECT status, end_reason, count(*) FROM sandboxes WHERE host_id = :h GROUP BY 1, 2"
    reasons = {(st, why): n for st, why, n in await sql(cp, q, h=hid)}
    assert reasons == {("stopped", "host_deleted"): 5, ("stopped", None): 1, ("error", None): 1}
    assert (await owner.req("GET", f"/v1/hosts/{host_id}")).status_code == 404
    assert token


async def test_refused_deletes_racing_each_other_leave_the_host_schedulable(cp: InProcessCP) -> None:
    """Concurrent refused deletes each drain the host for their check; none may put back a
    status another one set, and a `draining` left by a delete that died midway is undone by the
    next one (the host would otherwise never get a sandbox again)."""
    from warren import ids

    admin, user = await cp.signup(admin=True), await cp.signup()
    host_id, _ = await admin.create_host()
    hid = ids.parse_id(ids.Kind.HOST, host_id)
    await sql(cp, "UPDATE hosts SET status = 'online', address = '127.0.0.99:1' WHERE id = :h", h=hid)
    sb = ids.new_uuid()
    await sql(
        cp,
        "INSERT INTO sandboxes (id, team_id, host_id, status) VALUES (:id, :t, :h, 'running')",
        id=sb,
        t=ids.parse_id(ids.Kind.TEAM, user.team_id),
        h=hid,
    )
    try:
        for _ in range(5):
            rs = await asyncio.gather(*(admin.req("DELETE", f"/v1/hosts/{host_id}") for _ in range(6)))
            assert [r.status_code for r in rs] == [409] * 6, [r.text for r in rs]
            # Refused for its sandboxes, or because another of these deletes was under way.
            codes = {r.json()["error"]["code"] for r in rs}
            assert "has_active_sandboxes" in codes
            assert codes <= {"has_active_sandboxes", "delete_in_progress"}
            assert (await sql(cp, "SELECT status FROM hosts WHERE id = :h", h=hid))[0][0] == "online"
        await sql(cp, "UPDATE hosts SET status = 'draining' WHERE id = :h", h=hid)  # a delete died
        assert (await admin.req("DELETE", f"/v1/hosts/{host_id}")).status_code == 409
        assert (await sql(cp, "SELECT status FROM hosts WHERE id = :h", h=hid))[0][0] == "online"
    finally:
        await sql(cp, "DELETE FROM sandboxes WHERE id = :id", id=sb)
        await sql(cp, "UPDATE hosts SET status = 'unreachable' WHERE id = :h", h=hid)


async def test_byoc_host_rights_follow_the_team_role_read_from_the_db(cp: InProcessCP) -> None:
    """SPEC §7.1: create/delete a BYOC host and regenerate its token: owner and admin, not member;
    list/get/tag/delete-preview: every member. Roles are re-read on every request."""
    platform_admin, owner = await cp.signup(admin=True), await cp.signup()
    await set_byoc(platform_admin, owner.team_id)
    team_admin = await cp.join(owner, "admin")
    member = await cp.join(owner, "member")
    byoc = {"type": "byoc", "team_id": owner.team_id}

    r = await member.req("POST", "/v1/hosts", json=byoc)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    by_owner, _ = await owner.create_host("byoc", owner.team_id)
    by_admin, _ = await team_admin.create_host("byoc", owner.team_id)

    # Every member may look, tag and preview.
    assert {h["id"] for h in (await member.req("GET", "/v1/hosts")).json()} == {by_owner, by_admin}
    assert (await member.req("GET", f"/v1/hosts/{by_owner}")).status_code == 200
    assert (await member.req("POST", f"/v1/hosts/{by_owner}/tags", json={"tag": "m"})).status_code == 204
    assert (await member.req("GET", f"/v1/hosts/{by_owner}/tags")).json() == ["m"]
    assert (await member.req("DELETE", f"/v1/hosts/{by_owner}/tags/m")).status_code == 204
    r = await member.req("GET", f"/v1/hosts/{by_owner}/delete-preview")
    assert r.status_code == 200 and r.json()["sandbox_ids"] == []
    # ...but not regenerate a token or delete.
    for method, path in [("POST", f"/v1/hosts/{by_owner}/token"), ("DELETE", f"/v1/hosts/{by_owner}")]:
        r = await member.req(method, path)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (method, r.text)
    assert (await team_admin.req("POST", f"/v1/hosts/{by_owner}/token")).status_code == 201
    assert (await owner.req("POST", f"/v1/hosts/{by_admin}/token")).status_code == 201

    # Demoted in the DB: the JWT still says "admin", the next request is refused.
    r = await owner.req(
        "PATCH", f"/v1/teams/{owner.team_id}/members/{team_admin.id}", json={"role": "member"}
    )
    assert r.status_code == 204
    assert (await team_admin.req("DELETE", f"/v1/hosts/{by_admin}")).status_code == 403
    assert (await team_admin.req("POST", "/v1/hosts", json=byoc)).status_code == 403
    # Removed from the team: not even a look.
    r = await owner.req("DELETE", f"/v1/teams/{owner.team_id}/members/{member.id}")
    assert r.status_code == 204
    assert (await member.req("GET", f"/v1/hosts/{by_owner}")).status_code == 403
    # Owner and platform admin delete.
    assert (await owner.req("DELETE", f"/v1/hosts/{by_admin}")).status_code == 204
    assert (await platform_admin.req("DELETE", f"/v1/hosts/{by_owner}")).status_code == 204


async def test_no_byoc_host_for_a_soft_deleted_team(cp: InProcessCP) -> None:
    """SPEC §2.9 / §7.3: a soft-deleted team takes no new BYOC host, not even from its owner
    acting from another team, nor from a platform admin."""
    platform_admin, owner = await cp.signup(admin=True), await cp.signup()
    await set_byoc(platform_admin, owner.team_id)
    doomed = owner.team_id
    r = await owner.req("POST", "/v1/teams", json={"name": "Other"})
    assert r.status_code == 201
    other = r.json()["id"]
    assert (await owner.req("DELETE", f"/v1/teams/{doomed}")).status_code == 204
    r = await owner.req("POST", "/v1/auth/switch-team", json={"team_id": other})
    owner.token, owner.team_id = r.json()["token"], other
    for who in (owner, platform_admin):
        r = await who.req("POST", "/v1/hosts", json={"type": "byoc", "team_id": doomed})
        assert r.status_code == 400 and r.json()["error"]["message"] == "team not found", r.text
    assert await sql(cp, "SELECT count(*) FROM hosts WHERE team_id = :t", t=_team_uuid(doomed)) == [(0,)]


def _team_uuid(team_id: str) -> Any:
    from warren import ids

    return ids.parse_id(ids.Kind.TEAM, team_id)


def _is_400(r: httpx.Response) -> bool:
    return r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


async def test_bad_input_is_a_400_envelope_never_a_500(cp: InProcessCP) -> None:
    """NUL characters, integers past a PostgreSQL INT, unknown fields and wrong types on the
    hosts routes, including the unauthenticated agent-facing ones, are 400s, and a refused
    registration does not burn the one-time token."""
    admin = await cp.signup(admin=True)
    host_id, token = await admin.create_host()
    for body in [
        {"type": "regular", "provider": "nul\x00"},
        {"type": "regular", "availability_zone": "\x00"},
        {"type": "regular", "extra": 1},
        {"type": 5},
        {"type": "regular", "team_id": "team-\x00"},
    ]:
        r = await admin.req("POST", "/v1/hosts", json=body)
        assert _is_400(r), (body, r.status_code, r.text)
    for body in [{"tag": "a\x00b"}, {"tag": "ok", "x": 1}, {"tag": 7}]:
        r = await admin.req("POST", f"/v1/hosts/{host_id}/tags", json=body)
        assert _is_400(r), (body, r.status_code, r.text)
    # A NUL in a path parameter reaches the database: still the client's fault.
    r = await admin.req("DELETE", f"/v1/hosts/{host_id}/tags/a%00b")
    assert _is_400(r), (r.status_code, r.text)

    good = {"token": token, "address": "127.0.0.9:7"}
    extras: list[dict[str, Any]] = [
        {"cpu_cores": 2**31},
        {"memory_mb": 2**40},
        {"disk_gb": -1},
        {"address": "a\x00:1"},
        {"address": "x" * 300},
        {"arch": "\x00"},
        {"version": "1.0"},
        {"cpu_cores": "two"},
    ]
    for extra in extras:
        r = await cp.http.post("/v1/hosts/register", json={**good, **extra})
        assert _is_400(r), (extra, r.status_code, r.text)
    for body in [{"refresh_token": "\x00"}, {"refresh_token": 5}, {"refresh_token": "x", "host": 1}]:
        r = await cp.http.post("/v1/hosts/auth/refresh", json=body)
        assert _is_400(r), (body, r.status_code, r.text)
    r = await register(cp, token, "127.0.0.9:7")
    assert r.status_code == 201, r.text
    assert (await admin.req("DELETE", f"/v1/hosts/{host_id}")).status_code == 204
