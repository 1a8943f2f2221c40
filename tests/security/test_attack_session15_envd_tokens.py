"""Session 15: E2B envd access tokens that outlived their holder's access (docs/e2b.md §3).

A sandbox's envd token (``X-Access-Token``) and E2B's signed file URLs were derived from the
sandbox id alone: whoever once read the token (any member, any API key, through E2B's
get/connect) kept root exec and file access to that sandbox until it ended, and nothing could
rotate it. Fixed: a per-sandbox token epoch; a member's removal or departure and an API key's
revocation bump it for every live sandbox of the team, and ``POST
/v1/sandboxes/{id}/access-token`` bumps it for one. The remaining members get the new token from
E2B's connect (the real e2b SDK's ``Sandbox.connect``).

Each probe is run as the attacker would: the token read through the E2B control API with a
team key while it was theirs, then the envd plane called with it directly (a Connect process
``Start``, ``GET /files``, a signed download URL) after their access ended.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import e2b
import httpx
import jwt
import pytest

from tests.harness.e2b import E2BEnv, e2b_environment
from tests.harness.invitations import join_team
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PATH = "/etc/hostname"


@pytest.fixture(scope="module")
def e2b_env(platform: Platform) -> Iterator[E2BEnv]:
    with e2b_environment(platform, template="minimal") as env:
        yield env


@dataclass
class Stolen:
    """What the attacker copied while they had access: the token and a signed download URL."""

    e2b_url: str
    sandbox_id: str
    token: str

    def _at(self, **extra: str) -> dict[str, str]:
        return {"E2b-Sandbox-Id": self.sandbox_id, "E2b-Sandbox-Port": "49983"} | extra

    def exec_status(self) -> int:
        """A Connect ``process.Process/Start`` of ``id`` with the token: the HTTP status."""
        msg = json.dumps({"process": {"cmd": "/usr/bin/id", "args": []}}).encode()
        body = b"\x00" + len(msg).to_bytes(4, "big") + msg
        h = self._at(**{"X-Access-Token": self.token, "Content-Type": "application/connect+json",
                        "Connect-Protocol-Version": "1"})  # fmt: skip
        r = httpx.post(f"{self.e2b_url}/process.Process/Start", content=body, headers=h, timeout=60)
        return r.status_code

    def files_status(self) -> int:
        h = self._at(**{"X-Access-Token": self.token})
        return httpx.get(f"{self.e2b_url}/files", params={"path": PATH}, headers=h, timeout=60).status_code

    def signed_status(self) -> int:
        """E2B's signed download URL for PATH as root (the SDK's ``download_url`` scheme)."""
        raw = f"{PATH}:read:root:{self.token}"
        sig = "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()
        q = {"path": PATH, "username": "root", "signature": sig}
        h = {"E2b-Sandbox-Id": self.sandbox_id}  # what host-name routing supplies
        return httpx.get(f"{self.e2b_url}/files", params=q, headers=h, timeout=60).status_code

    def works(self) -> bool:
        statuses = (self.exec_status(), self.files_status(), self.signed_status())
        assert statuses in ((200, 200, 200), (401, 401, 401)), statuses
        return statuses == (200, 200, 200)


def envd_token(e2b_url: str, api_key: str, sandbox_id: str) -> str:
    """The token as E2B's control API hands it to a key of the team (``Sandbox.get_info``)."""
    r = httpx.get(f"{e2b_url}/sandboxes/{sandbox_id}", headers={"X-API-Key": api_key}, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["envdAccessToken"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Member:
    tenant: Tenant  # their own signup (their own team)
    user_id: str
    team_token: str  # a JWT acting in the victim's team
    team_key: str  # an API key they made in the victim's team


def add_member(platform: Platform, owner: Tenant, name: str) -> Member:
    t = signup(platform.url, name)
    claims: dict[str, Any] = jwt.decode(t.token, options={"verify_signature": False})
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        join_team(c, owner.team_id, claims["email"], inviter=owner.token, invitee=t.token)
        r = c.post("/v1/auth/switch-team", json={"team_id": owner.team_id}, headers=bearer(t.token))
        assert r.status_code == 200, r.text
        team_token = r.json()["token"]
        r = c.post("/v1/api-keys", json={"name": f"{name}-key"}, headers=bearer(team_token))
        assert r.status_code == 201, r.text
    return Member(t, claims["sub"], team_token, r.json()["key"])


def connect_and_run(e2b_env: E2BEnv, api_key: str, sandbox_id: str) -> str:
    """A remaining member's real e2b SDK: ``Sandbox.connect`` then a command over envd; the token
    it was given."""
    sbx = e2b.Sandbox.connect(sandbox_id, api_key=api_key)
    assert sbx.commands.run("echo still-mine").stdout.strip() == "still-mine"
    token: str = sbx._envd_access_token  # what connect handed the SDK
    return token


@pytest.mark.parametrize("how", ["removed", "left"])
def test_member_who_leaves_keeps_no_envd_token(platform: Platform, e2b_env: E2BEnv, how: str) -> None:
    owner = signup(platform.url, f"owner-{how}")
    sid = owner.create(memory_mb=128)
    mallory = add_member(platform, owner, f"mallory-{how}")
    stolen = Stolen(e2b_env.url, sid, envd_token(e2b_env.url, mallory.team_key, sid))
    assert stolen.works()
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        if how == "removed":
            r = c.delete(f"/v1/teams/{owner.team_id}/members/{mallory.user_id}", headers=bearer(owner.token))
        else:
            r = c.post(f"/v1/teams/{owner.team_id}/leave", headers=bearer(mallory.team_token))
        assert r.status_code == 204, r.text
    assert not stolen.works()  # exec, files and the signed URL: 401
    fresh = connect_and_run(e2b_env, owner.api_key, sid)
    assert fresh != stolen.token
    assert Stolen(e2b_env.url, sid, fresh).works()


def test_revoked_keys_tokens_are_refused(platform: Platform, e2b_env: E2BEnv) -> None:
    owner = signup(platform.url, "owner-key")
    sid = owner.create(memory_mb=128)
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        r = c.post("/v1/api-keys", json={"name": "ci"}, headers=bearer(owner.token))
        assert r.status_code == 201, r.text
        ci = r.json()
        stolen = Stolen(e2b_env.url, sid, envd_token(e2b_env.url, ci["key"], sid))
        assert stolen.works()
        r = c.delete(f"/v1/api-keys/{ci['id']}", headers=bearer(owner.token))
        assert r.status_code == 204, r.text
    assert not stolen.works()
    fresh = connect_and_run(e2b_env, owner.api_key, sid)
    assert fresh != stolen.token and Stolen(e2b_env.url, sid, fresh).works()


def test_rotation_by_api(platform: Platform, e2b_env: E2BEnv) -> None:
    owner, eve = signup(platform.url, "owner-rot"), signup(platform.url, "eve-rot")
    sid = owner.create(memory_mb=128)
    old = Stolen(e2b_env.url, sid, envd_token(e2b_env.url, owner.api_key, sid))
    assert old.works()
    # Another team cannot rotate (or learn about) the sandbox: the same 404 as an unknown id.
    r = eve.w("POST", f"/v1/sandboxes/{sid}/access-token")
    assert r.status_code == 404, r.text
    assert old.works()
    r = owner.w("POST", f"/v1/sandboxes/{sid}/access-token")
    assert r.status_code == 200, r.text
    new = Stolen(e2b_env.url, sid, r.json()["access_token"])
    assert new.token != old.token
    assert not old.works()
    assert new.works()
    assert envd_token(e2b_env.url, owner.api_key, sid) == new.token  # E2B's get/connect agree
    assert connect_and_run(e2b_env, owner.api_key, sid) == new.token
