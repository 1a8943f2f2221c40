"""Session 16: preview traffic tokens that outlived their holder's access (docs/networking.md §3).

A sandbox's traffic token (``X-Warren-Traffic-Token``) opens its private ports, and signed
preview URLs are keyed on it. It is random and stored hashed; whoever created the sandbox or
rotated the token had it, for as long as the sandbox lived. A member's removal or departure and
an API key's revocation bumped the sandboxes' envd tokens (session 15) but left the traffic
tokens working: mallory, removed from the team, still reached the sandbox's private server
with the token and with a signed URL she had made (a week's, at most). Now they are voided with
the envd tokens; the team makes a new one with ``POST /v1/sandboxes/{id}/traffic-token``.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session15_envd_tokens import Member, add_member, bearer

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PORT = 8000
SERVER = f"(setsid python3 -m http.server {PORT} --bind 0.0.0.0 >/dev/null 2>&1 &)"


def _private_sandbox(platform: Platform, owner: Tenant, mallory: Member) -> tuple[str, str, str]:
    """mallory creates a sandbox in the owner's team (its traffic token comes with it), starts a
    server on a private port and signs a URL to it: (sandbox id, token, signed URL)."""
    with httpx.Client(base_url=platform.url, timeout=120) as c:
        r = c.post(
            "/v1/sandboxes",
            json={"template": "minimal", "memory_mb": 128},
            headers=bearer(mallory.team_token),
        )
        assert r.status_code == 201, r.text
        sid, token = r.json()["id"], r.json()["traffic_token"]
        owner.sh(sid, SERVER)
        r = c.post(
            f"/v1/sandboxes/{sid}/preview/signed-url",
            json={"port": PORT, "expires": 7 * 86400},
            headers=bearer(mallory.team_token),
        )
        assert r.status_code == 200, r.text
    return sid, token, r.json()["url"]


def _reach(platform: Platform, sid: str, token: str, signed: str) -> tuple[int, int]:
    """What the token header and the signed URL get from the private port (no redirects)."""
    url = f"{platform.url}/v1/sandboxes/{sid}/ports/{PORT}/"
    deadline = time.monotonic() + 60
    while True:  # the server may still be starting
        by_token = httpx.get(url, headers={"X-Warren-Traffic-Token": token}, timeout=60).status_code
        if by_token != 502 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    by_url = httpx.get(signed, timeout=60, follow_redirects=False).status_code
    return by_token, by_url


@pytest.mark.parametrize("how", ["removed", "left", "key_revoked"])
def test_lost_access_takes_the_preview_tokens_with_it(platform: Platform, how: str) -> None:
    owner = signup(platform.url, f"owner-tt-{how}")
    mallory = add_member(platform, owner, f"mallory-tt-{how}")
    sid, token, signed = _private_sandbox(platform, owner, mallory)
    before = _reach(platform, sid, token, signed)
    assert before[0] == 200 and before[1] in (200, 302, 303, 307), before
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        if how == "removed":
            r = c.delete(f"/v1/teams/{owner.team_id}/members/{mallory.user_id}", headers=bearer(owner.token))
        elif how == "left":
            r = c.post(f"/v1/teams/{owner.team_id}/leave", headers=bearer(mallory.team_token))
        else:  # a key the team had (mallory's, say) is revoked: what it read goes with it
            keys = c.get("/v1/api-keys", headers=bearer(owner.token)).json()
            items = keys["items"] if isinstance(keys, dict) else keys
            key_id = next(k["id"] for k in items if k["name"] == f"mallory-tt-{how}-key")
            r = c.delete(f"/v1/api-keys/{key_id}", headers=bearer(owner.token))
        assert r.status_code == 204, r.text
    time.sleep(1.5)  # another CP worker's preview cache holds a row up to proxy_cache_s (1 s)
    after = _reach(platform, sid, token, signed)
    assert after == (403, 403), f"mallory still reaches the private port: {after}"
    # The team makes a new token; it works, and the old one stays dead.
    r = owner.w("POST", f"/v1/sandboxes/{sid}/traffic-token")
    assert r.status_code == 200, r.text
    fresh = r.json()["traffic_token"]
    url = f"{platform.url}/v1/sandboxes/{sid}/ports/{PORT}/"
    assert httpx.get(url, headers={"X-Warren-Traffic-Token": fresh}, timeout=60).status_code == 200
    assert httpx.get(url, headers={"X-Warren-Traffic-Token": token}, timeout=60).status_code == 403


def test_a_signed_url_needs_a_token_after_the_void(platform: Platform) -> None:
    """Between the void and a new token the sandbox has none: signing answers 409, not a URL
    keyed on nothing."""
    owner = signup(platform.url, "owner-tt-void")
    mallory = add_member(platform, owner, "mallory-tt-void")
    sid, _, _ = _private_sandbox(platform, owner, mallory)
    r = httpx.delete(
        f"{platform.url}/v1/teams/{owner.team_id}/members/{mallory.user_id}",
        headers=bearer(owner.token),
        timeout=60,
    )
    assert r.status_code == 204, r.text
    r = owner.w("POST", f"/v1/sandboxes/{sid}/preview/signed-url", {"port": PORT})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_traffic_token", r.text
