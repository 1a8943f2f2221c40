"""Removing a member, and the API keys they created (docs/auth.md "API keys and departing members").

Keys belong to the team: a plain removal (204, as the spec has it) leaves them working, and the
key listing names their creator so the admin sees what they may want to revoke.
``?revoke_keys=true`` revokes them in the removal's transaction (200, with what it revoked), as
``DELETE /v1/api-keys/{id}`` would: 401 at once, their open exec streams end
``access_revoked``, an audit row per key. Keys made by others stay; leaving keeps the leaver's
keys; nobody outside the team's managers may use the flag.

Real CP, agent and sandbox (the worker's shared platform, this module's own teams only).
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session15_envd_tokens import Member, add_member, bearer
from tests.security.test_attack_session16_tenant import ENDS_WITHIN_S, exec_ws, still_ticking, ws_outcome

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


def _call(url: str, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as c:
        return c.request(method, path, headers=bearer(token), **kw)


def _key_works(url: str, key: str) -> int:
    with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key}) as c:
        return c.get("/v1/sandboxes").status_code


def _new_key(url: str, token: str, name: str) -> dict[str, Any]:
    r = _call(url, "POST", "/v1/api-keys", token, json={"name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _keys(url: str, token: str) -> dict[str, dict[str, Any]]:
    r = _call(url, "GET", "/v1/api-keys", token)
    assert r.status_code == 200, r.text
    return {k["id"]: k for k in r.json()}


def _remove(url: str, owner: Tenant, who: Member, **params: str) -> httpx.Response:
    path = f"/v1/teams/{owner.team_id}/members/{who.user_id}"
    return _call(url, "DELETE", path, owner.token, params=params)


def _audit(url: str, owner: Tenant, **params: str) -> list[dict[str, Any]]:
    r = _call(url, "GET", "/v1/audit", owner.token, params={"limit": "200", **params})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _refs(keys: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(k["id"], k["name"], k["key_prefix"]) for k in keys]


def test_plain_removal_keeps_the_keys(platform: Platform) -> None:
    owner = signup(platform.url, "mkr-owner-plain")
    mallory = add_member(platform, owner, "mkr-mallory-plain")
    second = _new_key(platform.url, mallory.team_token, "mkr-second")
    listed = _keys(platform.url, owner.token)
    hers = [k for k in listed.values() if k["created_by"] == mallory.user_id]
    assert len(hers) == 2
    # The listing names the creator: id, and email (any member sees members' emails).
    assert {k["creator_email"] for k in hers} == {_claims(mallory.team_token)["email"]}
    r = _remove(platform.url, owner, mallory)
    assert r.status_code == 204, r.text
    # The listing still names them hers after she is gone.
    after = _keys(platform.url, owner.token)
    still = [k for k in after.values() if k["created_by"] == mallory.user_id]
    assert sorted(_refs(still)) == sorted(_refs(hers))
    # The team's keys: they keep working after their creator left.
    assert _key_works(platform.url, mallory.team_key) == 200
    assert _key_works(platform.url, second["key"]) == 200
    rows = _audit(platform.url, owner, action="remove", resource_type="member")
    [meta] = [r["metadata"] for r in rows if r["resource_id"] == mallory.user_id]
    assert meta["role"] == "member" and "revoked_keys" not in meta


def test_removal_with_revoke_keys_revokes_hers_only(platform: Platform) -> None:
    owner = signup(platform.url, "mkr-owner-flag")
    sid = owner.create(memory_mb=128)
    mallory = add_member(platform, owner, "mkr-mallory-flag")
    bob = add_member(platform, owner, "mkr-bob-flag")
    second = _new_key(platform.url, mallory.team_token, "mkr-flag-second")
    with (
        exec_ws(platform.url, sid, {"X-API-Key": mallory.team_key}) as hers,
        exec_ws(platform.url, sid, {"X-API-Key": bob.team_key}) as his,
    ):
        assert still_ticking(hers) and still_ticking(his)
        r = _remove(platform.url, owner, mallory, revoke_keys="true")
        assert r.status_code == 200, r.text
        # At once: no wait for the stream re-check.
        assert _key_works(platform.url, mallory.team_key) == 401
        assert _key_works(platform.url, second["key"]) == 401
        assert ws_outcome(hers, ENDS_WITHIN_S) == "access_revoked"
        assert still_ticking(his)  # bob's key is the team's and holds
    body = r.json()
    assert body["live_keys"] == []
    revoked = {k["id"] for k in body["revoked_keys"]}
    assert second["id"] in revoked and len(revoked) == 2
    assert all(k["key_prefix"] and k["name"] for k in body["revoked_keys"])
    assert _key_works(platform.url, bob.team_key) == 200
    assert _key_works(platform.url, owner.api_key) == 200
    left = _keys(platform.url, owner.token)
    assert not revoked & left.keys()
    assert {k["created_by"] for k in left.values()} == {_claims(owner.token)["sub"], bob.user_id}
    # Audit: the member's removal names the keys; each key has its revocation row.
    removal = [r for r in _audit(platform.url, owner, action="remove") if r["resource_id"] == mallory.user_id]
    assert len(removal) == 1 and set(removal[0]["metadata"]["revoked_keys"]) == revoked
    rows = _audit(platform.url, owner, action="revoke", resource_type="api_key")
    by_key = {r["resource_id"]: r["metadata"] for r in rows}
    assert revoked <= by_key.keys()
    assert all(by_key[k]["reason"] == "member_removed" for k in revoked)


def test_leaving_keeps_the_leavers_keys(platform: Platform) -> None:
    owner = signup(platform.url, "mkr-owner-leave")
    mallory = add_member(platform, owner, "mkr-mallory-leave")
    r = _call(platform.url, "POST", f"/v1/teams/{owner.team_id}/leave", mallory.team_token)
    assert r.status_code == 204, r.text
    assert _key_works(platform.url, mallory.team_key) == 200


def test_no_one_else_may_use_the_flag(platform: Platform) -> None:
    """An admin of another team (with her own team's JWT, or with this team's as a plain member)
    cannot remove a member or revoke their keys: 403 as the route answers today."""
    owner = signup(platform.url, "mkr-owner-eve")
    mallory = add_member(platform, owner, "mkr-mallory-eve")
    eve = add_member(platform, owner, "mkr-eve")  # a member here, owner of her own team
    path = f"/v1/teams/{owner.team_id}/members/{mallory.user_id}"
    for token in (eve.tenant.token, eve.team_token):
        r = _call(platform.url, "DELETE", path, token, params={"revoke_keys": "true"})
        assert r.status_code == 403, r.text
    stranger = signup(platform.url, "mkr-stranger")
    r = _call(platform.url, "DELETE", path, stranger.token, params={"revoke_keys": "true"})
    assert r.status_code == 403, r.text
    assert _key_works(platform.url, mallory.team_key) == 200
    r = _call(platform.url, "GET", f"/v1/teams/{owner.team_id}/members", owner.token)
    assert mallory.user_id in {m["user_id"] for m in r.json()}
