"""Session 11's hostile tenant: a preview link that hands the tenant's server a victim's session.

A path-routed preview (``/v1/sandboxes/{id}/ports/{port}/…``) is served from the control
plane's own origin, so a browser sends it every cookie it holds for that origin (Path=/): the
dashboard's session (``warren_session``, a signed JWT of the user's team), the OAuth state. The
proxy removed only its own ``warren_preview`` before forwarding the rest to the sandbox. So a
tenant with a public port sends a signed-in user a link (a top-level GET: SameSite=Lax lets
the cookie go): the tenant's server receives the victim's session cookie and replays it on the
dashboard as the victim (HttpOnly and the CSP sandbox on the page do not help: the server reads
the request, no script needed).

The other way round, the tenant's server answered ``Set-Cookie: warren_session=<its own>;
Path=/``, which the browser stored for the whole CP origin (the dashboard then runs as the
tenant's account: login CSRF), and any cookie with ``Path=/`` reached every other tenant's
preview on that origin.

With previews by host name (``WARREN_PREVIEW_DOMAIN``), ``Set-Cookie: …; Domain=<the preview
domain>`` from one sandbox reached every other sandbox's preview host, both ways.

A path-routed ``Clear-Site-Data: "cookies"`` cleared every cookie of the CP's site (the
dashboard's session included).

Expected: none of the platform's cookies (``warren_*``) reach a sandbox; a path-routed
sandbox's Set-Cookie cannot name one, and its cookies are confined to its own port's path; a
host-routed sandbox's cookies stay on its own host (no ``Domain``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant

pytestmark = pytest.mark.root

DOMAIN = "preview.test"

# Echoes the request's headers; /set answers with the cookies a hostile server would set.
APP = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        if self.path.startswith("/set"):
            self.send_header("Set-Cookie", "warren_session=planted; Path=/; HttpOnly")
            self.send_header("Set-Cookie", "WARREN_preview=1.x; Path=/")
            self.send_header("Set-Cookie", "tracker=1; Path=/; Domain=127.0.0.1")
            self.send_header("Set-Cookie", "elsewhere=1; path=/v1/sandboxes/other/ports/80")
            self.send_header("Set-Cookie", "own=1; Path=%s/app" % self.headers.get("X-Forwarded-Prefix", ""))
            self.send_header("Set-Cookie", "bare=1")
            self.send_header("Clear-Site-Data", '"cookies", "storage"')
        self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H).serve_forever()
"""


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir, {"WARREN_PREVIEW_DOMAIN": DOMAIN}) as p:
        yield p


@pytest.fixture(scope="module")
def mallory_port(platform: Platform, bob: Tenant) -> str:
    """Bob is the hostile tenant here: his sandbox's public port 8001, its path-routed URL."""
    sb = bob.create()
    bob.sh(sb, "cat > /tmp/app.py <<'EOF'\n" + APP + "EOF\n(setsid python3 /tmp/app.py >/dev/null 2>&1 &)")
    r = bob.w("PATCH", f"/v1/sandboxes/{sb}", {"public_ports": [8001]})
    assert r.status_code == 200, r.text
    url = f"{platform.url}/v1/sandboxes/{sb}/ports/8001"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(url + "/", timeout=30).status_code == 200:
            return url
        time.sleep(0.2)
    raise AssertionError("the sandbox's server did not come up")


def _signed_in_browser(platform: Platform) -> httpx.Client:
    """A victim signed in to the dashboard: a real ``warren_session`` cookie in the jar."""
    email = f"victim-{uuid.uuid4().hex[:10]}@example.com"
    r = httpx.post(
        f"{platform.url}/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "v"}, timeout=60
    )
    assert r.status_code == 201, r.text
    browser = httpx.Client(base_url=platform.url, headers={"Origin": platform.url}, timeout=60)
    token = re.search(r'name="csrf-token" content="([^"]+)"', browser.get("/login").text)
    assert token is not None
    r = browser.post("/login", data={"csrf_token": token[1], "email": email, "password": PASSWORD})
    assert r.status_code in (200, 303), r.text[:300]
    assert browser.cookies.get("warren_session"), browser.cookies
    return browser


def test_the_victims_dashboard_session_never_reaches_the_tenants_server(
    platform: Platform, mallory_port: str
) -> None:
    browser = _signed_in_browser(platform)
    try:
        session = browser.cookies["warren_session"]
        # What the browser sends on the link: every cookie of the origin, plus the sandbox's own.
        browser.cookies.set("warren_oauth_state", "s3cret", domain="127.0.0.1")
        browser.cookies.set("app_pref", "dark", domain="127.0.0.1")
        for path in ("/", "/anything?x=1"):
            r = browser.get(mallory_port + path)
            assert r.status_code == 200, r.text[:300]
            seen = {k.lower(): v for k, v in r.json().items()}
            cookie = seen.get("cookie", "")
            assert session not in cookie and "warren_session" not in cookie, cookie
            assert "warren_oauth_state" not in cookie and "s3cret" not in cookie, cookie
            assert "app_pref=dark" in cookie, cookie  # the sandbox's own cookies still pass
        # Hand-written, oddly spaced and cased, and alone: still dropped.
        for header in (
            f"warren_session={session}",
            f"a=1; Warren_Session = {session} ;b=2",
            "a=1;warren_x=1;b=2",
        ):
            r = httpx.get(mallory_port + "/", headers={"Cookie": header}, timeout=30)
            cookie = {k.lower(): v for k, v in r.json().items()}.get("cookie", "")
            assert "warren" not in cookie.lower() and session not in cookie, (header, cookie)

    finally:
        browser.close()


def test_a_sandbox_cannot_set_the_platforms_cookies_or_cookies_for_others(mallory_port: str) -> None:
    r = httpx.get(mallory_port + "/set", timeout=30)
    assert r.status_code == 200
    cookies = r.headers.get_list("set-cookie")
    prefix = urlsplit(mallory_port).path
    assert not [c for c in cookies if c.strip().lower().startswith("warren_")], cookies
    assert len(cookies) == 4, cookies  # tracker, elsewhere, own, bare
    for c in cookies:
        attrs = [a.strip().lower() for a in c.split(";")[1:]]
        assert not [a for a in attrs if a.startswith("domain")], c
        paths = [a.split("=", 1)[1] for a in attrs if a.startswith("path=")]
        assert len(paths) == 1 and (
            paths[0] == prefix.lower() or paths[0].startswith(prefix.lower() + "/")
        ), c
    assert any(c.startswith("own=1") and f"{prefix}/app".lower() in c.lower() for c in cookies), cookies
    assert "clear-site-data" not in r.headers, r.headers  # it would sign the victim out of the dashboard


def test_a_host_routed_sandbox_cannot_set_cookies_for_other_sandboxes(
    platform: Platform, mallory_port: str
) -> None:
    sandbox_id = urlsplit(mallory_port).path.split("/")[3]
    r = httpx.get(f"{platform.url}/set", headers={"Host": f"8001-{sandbox_id}.{DOMAIN}"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 6, cookies  # its own host's cookies: all kept, none for the domain
    assert not [c for c in cookies if "domain" in c.lower()], cookies
