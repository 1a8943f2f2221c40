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

The second half (below, on the same platform: host routing needs its preview domain) is the
same attack with the client's Warren API key or JWT in its headers instead of a cookie.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import jwt as pyjwt
import pytest
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.sync.client import connect as ws_connect

from tests.harness.cp import PASSWORD
from tests.harness.fixtures import PREVIEW_DOMAIN
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

# The shared platform has a preview domain (host-name routing); this module's sandboxes are its tenants'.
pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

DOMAIN = PREVIEW_DOMAIN

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


# ---------------------------------------------------------------- the platform's credentials
#
# The same hostile tenant, and a client that sends its Warren credentials to a preview URL: a
# script that sets ``X-API-Key`` or ``Authorization: Bearer`` on every request, an SDK user who
# points the same HTTP session at a sandbox's port. The proxy forwarded both headers as they
# were, so the tenant's server (any tenant's, on a public port) received the client's API key
# or JWT and could act as that client's team. A percent-encoded signed URL
# (``?warren%5Fsig=…``) was accepted as signed, yet reached a WebSocket server as it was.
#
# Expected: a Warren API key or JWT (user or host, signed with the CP's secret) in
# ``X-API-Key`` or ``Authorization`` never reaches a sandbox's server, whatever the route
# (by path, by host name, the E2B listener's port routes) or protocol (HTTP, WebSocket);
# Basic auth and bearer tokens that are not Warren's pass untouched (the app's own auth); no
# form of the signed URL's signature reaches it either.

# On 8002: after the upgrade, sends the request's head back as one text frame, then echoes.
WS_APP = r"""
import base64, hashlib, socket, struct, threading
def frame(op, data):
    n = len(data)
    size = bytes([n]) if n < 126 else b"\x7e" + struct.pack(">H", n)
    return bytes([0x80 | op]) + size + data
def serve(c):
    req = b""
    while b"\r\n\r\n" not in req: req += c.recv(4096)
    head = req.split(b"\r\n\r\n")[0]
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n" + frame(1, head[:60000]))
    f = c.makefile("rb")
    while True:
        h = f.read(2)
        if len(h) < 2: return
        op, n = h[0] & 15, h[1] & 127
        if n == 126: n = struct.unpack(">H", f.read(2))[0]
        elif n == 127: n = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4); data = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            c.sendall(b"\x88\x02" + data[:2]); c.close(); return
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8002)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@dataclass(frozen=True)
class Case:
    name: str
    headers: dict[str, str]
    secret: str  # what must not reach the server ("" for a case that must pass untouched)


def _cases(alice: Tenant) -> list[Case]:
    from tests.harness.cp import JWT_SECRET
    from warren.cp.security.tokens import issue_host_jwt

    host_jwt = issue_host_jwt(JWT_SECRET, uuid.uuid4())
    foreign_jwt = pyjwt.encode({"sub": "app-user", "exp": 2**31}, "the-apps-own-secret-" + "y" * 20)
    basic = "Basic " + base64.b64encode(b"admin:hunter2").decode()
    return [
        Case("api key header", {"X-API-Key": alice.api_key}, alice.api_key),
        Case("api key as bearer", {"Authorization": f"Bearer {alice.api_key}"}, alice.api_key),
        Case("api key without scheme", {"Authorization": alice.api_key}, alice.api_key),
        Case("user jwt", {"Authorization": f"Bearer {alice.token}"}, alice.token),
        Case("user jwt, odd spacing", {"Authorization": f"bearer   {alice.token}"}, alice.token),
        Case("user jwt in x-api-key", {"X-API-Key": alice.token}, alice.token),
        Case("host jwt", {"Authorization": f"Bearer {host_jwt}"}, host_jwt),
        Case("foreign jwt", {"Authorization": f"Bearer {foreign_jwt}"}, ""),
        Case("opaque bearer", {"Authorization": "Bearer app-token-123"}, ""),
        Case("basic auth", {"Authorization": basic}, ""),
        Case("app's own x-api-key", {"X-API-Key": "app-key-456"}, ""),
    ]


def _check(case: Case, seen: str) -> None:
    """``seen``: everything the sandbox's server received (its echo of the request)."""
    if case.secret:
        assert case.secret not in seen, (case.name, seen)
        return
    for name, value in case.headers.items():
        assert f"{name.lower()}: {value}".lower() in seen.lower(), (case.name, seen)


@pytest.fixture(scope="module")
def mallory_sandbox(platform: Platform, bob: Tenant, mallory_port: str) -> str:
    """Bob's sandbox of ``mallory_port``, with a WebSocket server on 8002 (public too)."""
    sb = urlsplit(mallory_port).path.split("/")[3]
    bob.sh(sb, "cat > /tmp/ws.py <<'EOF'\n" + WS_APP + "EOF\n(setsid python3 /tmp/ws.py >/dev/null 2>&1 &)")
    r = bob.w("PATCH", f"/v1/sandboxes/{sb}", {"public_ports": [8001, 8002]})
    assert r.status_code == 200, r.text
    ws_url = platform.url.replace("http://", "ws://") + f"/v1/sandboxes/{sb}/ports/8002/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        refused = (OSError, InvalidHandshake, InvalidURI)
        with contextlib.suppress(*refused), ws_connect(ws_url, open_timeout=30) as ws:
            ws.recv(timeout=30)
            return sb
        time.sleep(0.2)
    raise AssertionError("the sandbox's WebSocket server did not come up")


def _http_routes(platform: Platform, sb: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Route name → (URL, headers that pick the route): the three ways to port 8001."""
    return {
        "by path": (f"{platform.url}/v1/sandboxes/{sb}/ports/8001/x?q=1", {}),
        "by host": (f"{platform.url}/x?q=1", {"Host": f"8001-{sb}.{DOMAIN}"}),
        "e2b": (f"{platform.cp.e2b_url}/x?q=1", {"E2b-Sandbox-Id": sb, "E2b-Sandbox-Port": "8001"}),
    }


def test_a_clients_warren_credentials_never_reach_a_sandbox_over_http(
    platform: Platform, alice: Tenant, mallory_sandbox: str
) -> None:
    for route, (url, pick) in _http_routes(platform, mallory_sandbox).items():
        for case in _cases(alice):
            r = httpx.get(url, headers={**pick, **case.headers}, timeout=30)
            assert r.status_code == 200, (route, case.name, r.text[:300])
            seen = "\n".join(f"{k}: {v}" for k, v in r.json().items())
            _check(case, seen)


def _ws_head(platform: Platform, route: str, sb: str, headers: dict[str, str], query: str = "") -> str:
    """The head of the upgrade request as the sandbox's server on 8002 received it."""
    port = int(urlsplit(platform.url).port or 80)
    if route == "by path":
        uri, sock = f"ws://127.0.0.1:{port}/v1/sandboxes/{sb}/ports/8002/{query}", None
    elif route == "by host":  # the Host header is the URI's: connect to the CP under that name
        uri, sock = f"ws://8002-{sb}.{DOMAIN}:{port}/{query}", socket.create_connection(("127.0.0.1", port))
    else:
        uri, sock = platform.cp.e2b_url.replace("http://", "ws://") + "/", None
        headers = {**headers, "E2b-Sandbox-Id": sb, "E2b-Sandbox-Port": "8002"}
    with ws_connect(uri, sock=sock, additional_headers=headers, open_timeout=30) as ws:
        head = ws.recv(timeout=30)
    return head if isinstance(head, str) else head.decode("latin-1")


def test_a_clients_warren_credentials_never_reach_a_sandbox_over_websockets(
    platform: Platform, alice: Tenant, mallory_sandbox: str
) -> None:
    for route in ("by path", "by host", "e2b"):
        for case in _cases(alice):
            _check(case, _ws_head(platform, route, mallory_sandbox, case.headers))


def test_no_form_of_a_signed_urls_signature_reaches_the_sandbox(
    platform: Platform, bob: Tenant, mallory_sandbox: str
) -> None:
    r = bob.w("POST", f"/v1/sandboxes/{mallory_sandbox}/preview/signed-url", {"port": 8002, "path": "/"})
    assert r.status_code == 200, r.text
    query = urlsplit(r.json()["url"]).query
    sig = dict(p.split("=", 1) for p in query.split("&"))["warren_sig"]
    for q in (query, query.replace("warren_sig", "warren%5Fsig"), query.replace("warren_", "%77arren_")):
        head = _ws_head(platform, "by path", mallory_sandbox, {}, "?app=1&" + q)
        assert sig not in head and "warren" not in head.split("\r\n")[0].lower(), head
        assert "app=1" in head.split("\r\n")[0], head  # the app's own parameters pass
        # Over HTTP a signed URL is answered with its cookie and a redirect to the clean URL
        # (the percent-encoded form redirected to itself, for ever).
        url = f"{platform.url}/v1/sandboxes/{mallory_sandbox}/ports/8002/?app=1&{q}"
        r = httpx.get(url, timeout=30)
        assert r.status_code == 302, (q, r.status_code, r.text[:300])
        assert sig not in r.headers["location"] and "warren" not in r.headers["location"], r.headers
