"""Session 14: a user with no live team signs in to a *teamless* token (docs/spec.md §2.1), so
they can answer an invitation or make a team. The token must open nothing else.

Tess deleted her only team and signed in again. As the attacker she aims her teamless token at
every route of the public API (read from the CP's own OpenAPI document, so a route added later is
attacked too) with Bob's real ids in the path, at every per-sandbox verb of the IDOR list over
HTTP and WebSocket, accepts and declines other people's invitations, a revoked and an expired
one of her own, switches into a team she was only invited to, edits and re-signs her token's
team claim, and signs in past the login rate limit. Nothing may answer other than 403
``no_team`` (or 401/404 where stated), and Bob's sandbox, team and invitations must be as they
were.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from tests.harness.cp import JWT_SECRET, PASSWORD
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_what_held_api import IDOR, _aim, bearer, call, ws_status, ws_url
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

SECRET = "bob-secret-14"
NO_TEAM_HINT = "accept an invitation or create a team"
# What a teamless token may reach (docs/spec.md §2.1): its profile and email verification, its
# invitations, its team list, a team of its own, switch-team.
TEAMLESS_ROUTES = {
    ("GET", "/v1/users/me"),
    ("POST", "/v1/users/me/verify-email"),  # session 14: a teamless user must verify to accept
    ("GET", "/v1/invitations"),
    ("POST", "/v1/invitations/{invitation_id}/accept"),
    ("POST", "/v1/invitations/{invitation_id}/decline"),
    ("GET", "/v1/teams"),
    ("POST", "/v1/teams"),
    ("POST", "/v1/auth/switch-team"),
}
# Bodies that would do harm on success where an empty one is refused before authentication
# (a body the route cannot parse says nothing about anyone's team).
BODIES: dict[tuple[str, str], Any] = {("PATCH", "/v1/teams/{team_id}"): {"name": "owned"}}
# Routes that take no user token at all: a bearer JWT is not their credential (401, or 403).
NOT_USER_ROUTES = {("POST", "/v1/hosts/{host_id}/heartbeat"), ("GET", "/metrics")}


@dataclass
class Teamless:
    url: str
    email: str
    user_id: str
    token: str

    @property
    def h(self) -> dict[str, str]:
        return bearer(self.token)


def teamless_user(url: str, name: str) -> Teamless:
    """A stranger whose only team was deleted, signed in again."""
    email = f"{name}-{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name})
        assert r.status_code == 201, r.text
        first = r.json()
        h = bearer(first["token"])
        assert c.delete(f"/v1/teams/{first['team_id']}", headers=h).status_code == 204
        r = c.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200 and r.json()["team_id"] is None, r.text
    return Teamless(url, email, first["user_id"], r.json()["token"])


@dataclass
class Victim:
    sb: str
    key_id: str
    bob_user: str
    invitation: str  # Bob's team's pending invitation of Carol
    carol: Tenant


@pytest.fixture(scope="module")
def tess(platform: Platform) -> Teamless:
    return teamless_user(platform.url, "tess")


@pytest.fixture(scope="module")
def victim(platform: Platform, bob: Tenant) -> Iterator[Victim]:
    """Bob's sandbox (a secret file, a tagged process), his API key and a pending invitation."""
    sb = bob.create(memory_mb=128)
    bob.sh(sb, f"echo {SECRET} > /root/secret")
    assert bob.w("POST", f"/v1/sandboxes/{sb}/processes", {"cmd": "/bin/sleep", "args": ["3600"],
                                                         "tag": "web"}).status_code == 201  # fmt: skip
    with httpx.Client(base_url=platform.url, headers=bearer(bob.token), timeout=60) as c:
        key_id = c.get("/v1/api-keys").json()[0]["id"]
        carol = signup(platform.url, "carol")
        carol_email = jwt.decode(carol.token, options={"verify_signature": False})["email"]
        r = c.post(f"/v1/teams/{bob.team_id}/members", json={"email": carol_email})
        assert r.status_code == 201, r.text
    bob_user = jwt.decode(bob.token, options={"verify_signature": False})["sub"]
    yield Victim(sb, key_id, bob_user, r.json()["id"], carol)
    bob.w("DELETE", f"/v1/sandboxes/{sb}")


def _fill(path: str, bob: Tenant, v: Victim) -> str:
    values = {
        "sandbox_id": v.sb, "team_id": bob.team_id, "user_id": v.bob_user, "key_id": v.key_id,
        "invitation_id": v.invitation, "name": "minimal", "template": "minimal", "pid_or_tag": "web",
        "build_id": ids.format_id(ids.Kind.BUILD, uuid.uuid4()),
        "host_id": ids.host_id(uuid.uuid4()), "watcher_id": "w", "tag": "t", "provider": "github",
    }  # fmt: skip
    for k, val in values.items():
        path = path.replace("{" + k + "}", val)
    assert "{" not in path, path
    return path


def _user_routes(url: str) -> list[tuple[str, str]]:
    """Every authenticated operation the CP documents, but the teamless ones."""
    spec = httpx.get(f"{url}/openapi.json", timeout=60).json()
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            key = (method.upper(), path)
            if op.get("security") and key not in TEAMLESS_ROUTES | NOT_USER_ROUTES:
                out.append(key)
    return out


def test_a_teamless_token_reaches_no_documented_team_route(
    tess: Teamless, bob: Tenant, victim: Victim
) -> None:
    routes = _user_routes(tess.url)
    assert len(routes) > 60, routes  # the document is the whole API, not an empty one
    wrong = {}
    for method, path in routes:
        payload = BODIES.get((method, path), {})
        status, body = call(tess.url, tess.h, method, _fill(path, bob, victim), payload)
        code = (body or {}).get("error", {}).get("code") if isinstance(body, dict) else None
        message = (body or {}).get("error", {}).get("message", "") if isinstance(body, dict) else ""
        if (status, code) != (403, "no_team") or NO_TEAM_HINT not in message:
            wrong[f"{method} {path}"] = (status, body)
    assert wrong == {}
    for method, path in NOT_USER_ROUTES:
        status, _ = call(tess.url, tess.h, method, _fill(path, bob, victim), {})
        assert status in (401, 403), (method, path, status)  # /metrics: 403 without its scrape token


@pytest.mark.parametrize(("method", "suffix", "payload"), IDOR, ids=[f"{m} {s}" for m, s, _ in IDOR])
def test_every_sandbox_verb_is_no_team_for_a_teamless_token(
    tess: Teamless, victim: Victim, method: str, suffix: str, payload: Any
) -> None:
    if method == "WS":
        for headers, query in ((tess.h, ""), (None, f"?token={tess.token}")):
            status, body = ws_status(ws_url(tess.url, victim.sb, query), headers)
            assert (status, body["error"]["code"]) == (403, "no_team"), body
        return
    status, body = call(tess.url, tess.h, method, *_aim(victim.sb, method, suffix, payload))
    assert (status, body["error"]["code"]) == (403, "no_team"), body


def test_bob_lost_nothing(bob: Tenant, victim: Victim) -> None:
    """Runs after the attacks above in file order; each would leave a trace on success."""
    r = bob.w("GET", f"/v1/sandboxes/{victim.sb}")
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert bob.sh(victim.sb, "cat /root/secret") == f"{SECRET}\n"
    assert "pwned" not in bob.sh(victim.sb, "ls -A /root /tmp")
    assert "web" in [p.get("tag") for p in bob.w("GET", f"/v1/sandboxes/{victim.sb}/processes").json()]
    with httpx.Client(base_url=bob.url, headers=bearer(bob.token), timeout=60) as c:
        team = c.get(f"/v1/teams/{bob.team_id}").json()
        assert [m["user_id"] for m in team["members"]] == [victim.bob_user], team
        assert team["team"]["name"] != "owned" and team["team"]["name"] != ""
        assert victim.key_id in [k["id"] for k in c.get("/v1/api-keys").json()]
        assert victim.invitation in [i["id"] for i in c.get(f"/v1/teams/{bob.team_id}/invitations").json()]


def test_a_teamless_user_cannot_answer_someone_elses_invitation(
    platform: Platform, tess: Teamless, bob: Tenant, victim: Victim
) -> None:
    """Carol's invitation to Bob's team: Tess can neither take it nor throw it away; and an
    invitation of Tess's own that Bob revoked, or that expired, is gone for her too."""
    ghost = ids.format_id(ids.Kind.INVITATION, uuid.uuid4())
    for verb in ("accept", "decline"):
        for inv in (victim.invitation, ghost, "inv-", "inv-" + "z" * 30):
            status, body = call(tess.url, tess.h, "POST", f"/v1/invitations/{inv}/{verb}", None)
            assert status == 404, (verb, inv, status, body)
    assert call(tess.url, tess.h, "GET", "/v1/invitations", None) == (200, [])
    # Switching into the team she is not in (Carol's invitation names it) is refused.
    status, body = call(tess.url, tess.h, "POST", "/v1/auth/switch-team", {"team_id": bob.team_id})
    assert status == 403, body
    with httpx.Client(base_url=bob.url, headers=bearer(victim.carol.token), timeout=60) as c:
        assert victim.invitation in [i["id"] for i in c.get("/v1/invitations").json()]
    # Revoked, then expired: each a 404, and Tess stays outside Bob's team.
    with httpx.Client(base_url=bob.url, headers=bearer(bob.token), timeout=60) as c:
        r = c.post(f"/v1/teams/{bob.team_id}/members", json={"email": tess.email})
        assert r.status_code == 201, r.text
        revoked = r.json()["id"]
        assert c.delete(f"/v1/teams/{bob.team_id}/invitations/{revoked}").status_code == 204
        r = c.post(f"/v1/teams/{bob.team_id}/members", json={"email": tess.email})
        assert r.status_code == 201, r.text
        expired = r.json()["id"]
    # Its week is over (a row of this module's own tenant's team).
    asyncio.run(
        platform.sql(
            "UPDATE team_invitations SET expires_at = now() - interval '1 second' WHERE id = :i",
            i=ids.parse_id(ids.Kind.INVITATION, expired),
        )
    )
    for inv in (revoked, expired):
        assert call(tess.url, tess.h, "POST", f"/v1/invitations/{inv}/accept", None)[0] == 404
    assert call(tess.url, tess.h, "GET", "/v1/invitations", None) == (200, [])
    assert call(tess.url, tess.h, "GET", "/v1/teams", None) == (200, [])


def test_a_forged_team_claim_opens_nothing(tess: Teamless, bob: Tenant, victim: Victim) -> None:
    """Tess writes Bob's team into her teamless token: kept signature, stripped signature,
    ``alg: none``, a guessed secret (all 401); and even a correctly signed token naming Bob's
    team for her (what the CP's secret would give) meets the membership check (403)."""
    header, _, sig = tess.token.split(".")
    claims = jwt.decode(tess.token, options={"verify_signature": False})
    assert claims["team_id"] is None
    to_bob = {**claims, "team_id": bob.team_id, "role": "owner"}

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    no_team_claim = {k: v for k, v in claims.items() if k != "team_id"}
    forged = {
        "team claim written, signature kept": f"{header}.{b64(to_bob)}.{sig}",
        "team claim dropped, signature kept": f"{header}.{b64(no_team_claim)}.{sig}",
        # Even the CP's own secret: a token without a team claim is invalid, not teamless.
        "team claim dropped, signed": jwt.encode(no_team_claim, JWT_SECRET, algorithm="HS256"),
        "signature stripped": f"{header}.{b64(to_bob)}.",
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(to_bob)}.",
        "guessed secret": jwt.encode(to_bob, "secret" * 8, algorithm="HS256"),
    }
    targets = (
        ("GET", f"/v1/sandboxes/{victim.sb}"),
        ("GET", f"/v1/teams/{bob.team_id}/members"),
        ("GET", "/v1/invitations"),
        ("GET", "/v1/users/me"),
    )
    for what, token in forged.items():
        for method, path in targets:
            status, _ = call(tess.url, bearer(token), method, path, None)
            assert status == 401, (what, path, status)
    genuine = jwt.encode(to_bob, JWT_SECRET, algorithm="HS256")
    for method, path in targets[:2]:
        status, body = call(tess.url, bearer(genuine), method, path, None)
        assert status == 403 and body["error"]["message"] == "not a member of this team", (path, body)
    # A teamless claim with a role in it is still teamless: the role is never read from a token.
    owner_claim = jwt.encode({**claims, "role": "owner"}, JWT_SECRET, algorithm="HS256")
    status, body = call(tess.url, bearer(owner_claim), "GET", f"/v1/sandboxes/{victim.sb}", None)
    assert (status, body["error"]["code"]) == (403, "no_team")


def test_teamless_sign_in_counts_against_the_login_limit(platform: Platform) -> None:
    """Signing in without a team is a login like any other: the 61st in a minute for one
    account is 429, on the API and on the dashboard's form."""
    fred = teamless_user(platform.url, "fred")
    body = {"email": fred.email, "password": PASSWORD}
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        # Bounded, and no clock in it: uncounted teamless sign-ins would never meet a 429.
        for _ in range(150):
            r = c.post("/v1/auth/login", json=body)
            if r.status_code != 200:
                break
            assert r.json()["team_id"] is None, r.text
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert int(r.headers["Retry-After"]) >= 1
