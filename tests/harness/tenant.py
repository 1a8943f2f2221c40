"""One team's credentials against a live platform, with the two moves an attacker has: an API
call (``w``) and a shell script run inside one of their sandboxes (``x``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness.cp import PASSWORD
from tests.harness.invitations import verify_email


@dataclass
class Tenant:
    """One team's credentials against one platform."""

    url: str
    api_key: str
    team_id: str
    token: str = ""  # the owner's JWT, when the tenant was signed up here

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.api_key}, timeout=timeout)

    def w(self, method: str, path: str, json: Any = None, timeout: float = 120) -> httpx.Response:
        """One API call with this tenant's key."""
        with self.client(timeout) as c:
            return c.request(method, path, json=json)

    def create(self, **body: Any) -> str:
        r = self.w("POST", "/v1/sandboxes", {"template": "minimal", **body})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def x(self, sandbox_id: str, script: str, timeout_sec: int = 60) -> httpx.Response:
        """``/bin/sh -c script`` inside the sandbox through the unary exec route."""
        body = {"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": timeout_sec}
        return self.w("POST", f"/v1/sandboxes/{sandbox_id}/exec", body, timeout=timeout_sec + 60)

    def sh(self, sandbox_id: str, script: str, timeout_sec: int = 60) -> str:
        """Like ``x``, but the command must succeed; returns its stdout."""
        r = self.x(sandbox_id, script, timeout_sec)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["exit_code"] == 0, out
        return str(out["stdout"])


# Every tenant signed up, by platform URL: a shared platform's module view deletes their
# sandboxes when its module ends (tests/harness/platform.py).
_SIGNED_UP: dict[str, list[Tenant]] = {}


def signed_up(url: str) -> list[Tenant]:
    return _SIGNED_UP.setdefault(url, [])


def signup(url: str, name: str = "tenant") -> Tenant:
    """A new account (and its own team) with an API key: a stranger off the street."""
    email = f"{name}-{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name})
        assert r.status_code == 201, r.text
        auth = r.json()
        verify_email(c, auth["token"])
        r = c.post("/v1/api-keys", json={"name": name}, headers={"Authorization": f"Bearer {auth['token']}"})
        assert r.status_code == 201, r.text
        tenant = Tenant(url, r.json()["key"], auth["team_id"], auth["token"])
    signed_up(url).append(tenant)
    return tenant
