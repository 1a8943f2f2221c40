"""Session 34: the team's request rate limit, around its edges.

A team's REST requests share one token bucket (``WARREN_TEAM_RATE_LIMIT_PER_S``, burst
``WARREN_TEAM_RATE_BURST``; 429 ``rate_limited`` past it), so one tenant cannot take the CP from
the others. Three doors did not count:

- **E2B's envd calls** (``process.Process/*``, ``filesystem.Filesystem/*``, ``/files``), with the
  sandbox's access token: every command and file operation of an E2B client, unmetered.
- **WebSocket opens** (exec stream, terminal, watch): each authenticates, looks the sandbox up
  and reaches its agent, unmetered; only the open streams were capped, not the rate of opening.
- **The dashboard**, with a signed-in session: its pages and actions reach the same services.

Now each takes a token from the team's bucket as a REST call does (envd answers Connect's
``resource_exhausted``, a WebSocket open is refused 429 before the upgrade, a dashboard request
gets the error page or answer with 429). Signed URLs and previews stay outside it (their callers
hold no team credential). Written as the attacker runs
it: her team's key or her sandbox's envd token, calls in a loop.

This module's CP allows 1 request a second, 5 at once, so each probe passes it within a second.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.cp import PASSWORD
from tests.harness.invitations import verify_email
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session12_streams import envd_headers
from tests.security.test_attack_stream_count import try_websocket

pytestmark = pytest.mark.root

PER_S, BURST = 1, 5
CALLS = 40


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    env = {"WARREN_TEAM_RATE_LIMIT_PER_S": str(PER_S), "WARREN_TEAM_RATE_BURST": str(BURST)}
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


@pytest.fixture(scope="module")
def alice(platform: Platform) -> Tenant:
    return signup(platform.url, "alice")


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    sid = _retrying(lambda: alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128}))
    yield sid
    _retrying(lambda: alice.w("DELETE", f"/v1/sandboxes/{sid}"))


def _retrying(call) -> str:  # type: ignore[no-untyped-def]
    """The fixture's own REST calls share the bucket the probes spend: wait out its 429s."""
    for _ in range(60):
        r = call()
        if r.status_code != 429:
            assert r.status_code < 300, r.text
            return str(r.json()["id"]) if r.content else ""
        time.sleep(1)
    raise AssertionError("rate limited for a minute")


def _full_bucket() -> None:
    time.sleep(BURST / PER_S + 0.5)


def _within_the_rate(answered: int, elapsed: float) -> bool:
    """What the bucket lets through in ``elapsed`` seconds from full, one token of slack."""
    return answered <= BURST + PER_S * elapsed + 1


def test_envd_calls_count_against_the_teams_rate(platform: Platform, sandbox: str) -> None:
    headers = {**envd_headers(sandbox), "Content-Type": "application/json"}
    _full_bucket()
    answers: list[int] = []
    with httpx.Client(base_url=platform.cp.e2b_url, timeout=60) as c:
        began = time.monotonic()
        for _ in range(CALLS):
            answers.append(c.post("/process.Process/List", json={}, headers=headers).status_code)
        elapsed = time.monotonic() - began
    ok, refused = answers.count(200), answers.count(429)
    print(f"envd List x{CALLS} in {elapsed:.1f} s: {ok} answered, {refused} refused")
    assert ok + refused == CALLS, answers
    assert _within_the_rate(ok, elapsed), f"{ok} envd calls answered in {elapsed:.1f} s"


@pytest.mark.parametrize("route", ["exec/stream", "pty", "watch?path=/tmp"])
def test_websocket_opens_count_against_the_teams_rate(alice: Tenant, sandbox: str, route: str) -> None:
    _full_bucket()
    opened, refused = 0, 0
    began = time.monotonic()
    for _ in range(CALLS):
        got = try_websocket(alice.url, f"/v1/sandboxes/{sandbox}/{route}", {"X-API-Key": alice.api_key})
        if isinstance(got, tuple):
            assert got[0] == 429 and got[1]["error"]["code"] == "rate_limited", got
            refused += 1
        else:
            got.close()
            opened += 1
    elapsed = time.monotonic() - began
    print(f"{route}: {CALLS} opens in {elapsed:.1f} s: {opened} opened, {refused} refused")
    assert _within_the_rate(opened, elapsed), f"{opened} WebSockets opened in {elapsed:.1f} s"


def _signed_in(c: httpx.Client) -> None:
    """``c`` holds a new account's dashboard session."""
    email = f"dash-{uuid.uuid4().hex[:10]}@example.com"
    r = c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "dash"})
    assert r.status_code == 201, r.text
    verify_email(c, r.json()["token"])
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/login").text)
    assert token is not None
    form = {"csrf_token": token[1], "email": email, "password": PASSWORD}
    assert c.post("/login", data=form).status_code in (200, 303)


def test_dashboard_requests_count_against_the_teams_rate(platform: Platform) -> None:
    """A script with a signed-in session (the tenant's own account) reading a dashboard page in
    a loop; navigations that pass the rate get the error page with 429."""
    with httpx.Client(base_url=platform.url, headers={"Origin": platform.url}, timeout=60) as c:
        _signed_in(c)
        _full_bucket()
        began = time.monotonic()
        answers = [c.get("/dashboard/sandboxes", headers={"Accept": "text/html"}) for _ in range(CALLS)]
        elapsed = time.monotonic() - began
    ok = sum(a.status_code == 200 for a in answers)
    refused = [a for a in answers if a.status_code == 429]
    print(f"dashboard: {CALLS} pages in {elapsed:.1f} s: {ok} answered, {len(refused)} refused")
    assert ok + len(refused) == CALLS, [a.status_code for a in answers]
    assert _within_the_rate(ok, elapsed), f"{ok} dashboard pages answered in {elapsed:.1f} s"
    assert "text/html" in refused[0].headers["content-type"] and "Retry-After" in refused[0].headers


def test_the_lists_refresh_past_the_rate_is_told_why(platform: Platform) -> None:
    """The sandbox list's refresh (the page's script asks for the HTML fragment, as app.js
    does) past the team's rate gets the rate limit's envelope, which the page shows in a toast.
    Before, it got the error page meant for a navigation, and the page said "Something went
    wrong" (session 35)."""
    refresh = {"Accept": "text/html", "X-Requested-With": "fetch"}
    with httpx.Client(base_url=platform.url, headers={"Origin": platform.url}, timeout=60) as c:
        _signed_in(c)
        _full_bucket()
        answers = [c.get("/dashboard/sandboxes/rows", headers=refresh) for _ in range(BURST + 5)]
    assert answers[0].status_code == 200 and 'id="sandbox-list"' in answers[0].text, answers[0].text
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert refused[0].headers["content-type"] == "application/json", refused[0].headers
    assert refused[0].json()["error"]["code"] == "rate_limited", refused[0].text
    assert "Retry-After" in refused[0].headers
