"""Session 14's hostile tenant with two teams (Alice attacks, Bob is the victim), against what
session 12's tenant pass (``test_attack_session12_tenants.py``) did not reach: other spellings of
a sandbox id, E2B's routing headers mixed and repeated, polling watchers of another sandbox,
preview host names and cookies across teams, cookies planted by a sandbox without a name, and
the slots of another team's public port.

Each probe is written as the attacker runs it: the public API and the E2B listener with her own
team's key, and the envd access token E2B's create answers her.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.harness.warren_proxy import running_proxy

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


def e2b(platform: Platform, t: Tenant, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=platform.cp.e2b_url, headers={"X-API-KEY": t.api_key}, timeout=120) as c:
        return c.request(method, path, json=body)


@pytest.fixture(scope="module")
def e2b_sandboxes(platform: Platform, alice: Tenant, bob: Tenant) -> Iterator[tuple[dict[str, Any], str]]:
    """Alice's E2B sandbox (create's answer: id and envd token) and Bob's sandbox id."""
    made = []
    for t in (alice, bob):
        r = e2b(platform, t, "POST", "/sandboxes", {"templateID": "minimal", "timeout": 900})
        assert r.status_code == 201, r.text
        made.append(r.json())
    yield made[0], made[1]["sandboxID"]
    for t, m in zip((alice, bob), made, strict=True):
        e2b(platform, t, "DELETE", f"/sandboxes/{m['sandboxID']}")


# ------------------------------------------------------------ another spelling of a sandbox id


def test_a_sandbox_id_with_a_trailing_newline_names_no_sandbox(
    platform: Platform, alice: Tenant, e2b_sandboxes: tuple[dict[str, Any], str]
) -> None:
    """Found: ``ids.parse_id`` matched ``^[0-9a-z]{25}$``, and ``$`` also matches before a final
    newline, so ``sb-…%0A`` named the sandbox ``sb-…`` on every route. E2B's connect then
    answered a second ``envdAccessToken`` for the same sandbox (the token is derived from the id
    as written), and audit rows and logs carried ids that are nobody's. Now such an id is a 400,
    as any other malformed id."""
    mine, bobs = e2b_sandboxes[0]["sandboxID"], e2b_sandboxes[1]
    for sid in (mine, bobs):
        odd = sid + "%0A"
        for method, path, body in (
            ("GET", f"/v1/sandboxes/{odd}", None),
            ("POST", f"/v1/sandboxes/{odd}/exec", {"cmd": "hostname"}),
            ("POST", f"/v1/sandboxes/{odd}/files/stat", {"path": "/etc"}),
            ("GET", f"/v1/sandboxes/{odd}/preview", None),
        ):
            r = alice.w(method, path, body)
            assert r.status_code in (400, 404), (sid == mine, path, r.status_code, r.text)
        for method, path, body in (
            ("POST", f"/sandboxes/{odd}/connect", {"timeout": 60}),
            ("GET", f"/sandboxes/{odd}", None),
            ("POST", f"/sandboxes/{odd}/timeout", {"timeout": 60}),
        ):
            r = e2b(platform, alice, method, path, body)
            assert r.status_code in (400, 404), (sid == mine, path, r.status_code, r.text)
            assert "envdAccessToken" not in r.text


# ------------------------------------------------------------ E2B's routing headers, mixed


def _files(platform: Platform, headers: list[tuple[str, str]]) -> httpx.Response:
    with httpx.Client(base_url=platform.cp.e2b_url, timeout=120) as c:
        return c.get("/files", params={"path": "/etc/hostname"}, headers=headers)


def test_e2b_routing_headers_mixed_and_repeated(
    platform: Platform, e2b_sandboxes: tuple[dict[str, Any], str]
) -> None:
    """Held: the listener picks one sandbox per request, and the same one authenticates it and
    serves it. Alice's token with Bob's id in a second ``E2b-Sandbox-Id``, in the ``Host`` name,
    or first, reads her own sandbox or nothing, never Bob's."""
    mine, bobs = e2b_sandboxes[0]["sandboxID"], e2b_sandboxes[1]
    token = e2b_sandboxes[0]["envdAccessToken"]
    tok = ("X-Access-Token", token)
    port = ("E2b-Sandbox-Port", "49983")
    for headers in (
        [("E2b-Sandbox-Id", mine), ("Host", f"49983-{bobs}.preview.example"), tok],
        [("E2b-Sandbox-Id", mine), ("E2b-Sandbox-Id", bobs), tok, port],
        [("E2b-Sandbox-Id", mine), ("e2b-sandbox-id", bobs), tok, ("X-Access-Token", "ea_x"), port],
    ):
        r = _files(platform, headers)
        assert (r.status_code, r.text) == (200, mine + "\n"), (headers, r.text)
    for headers in (
        [("E2b-Sandbox-Id", bobs), ("E2b-Sandbox-Id", mine), tok, port],
        [("E2b-Sandbox-Id", bobs), ("Host", f"49983-{mine}.preview.example"), tok],
        [("E2b-Sandbox-Id", bobs), ("X-Access-Token", token), ("X-Access-Token", token), port],
        [("E2b-Sandbox-Id", bobs), ("E2b-Sandbox-Port", "49983"), ("E2b-Sandbox-Port", "80"), tok],
    ):
        r = _files(platform, headers)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert bobs + "\n" not in r.text


# ------------------------------------------------------------ another sandbox's watcher


def test_another_sandboxs_polling_watcher(alice: Tenant, bob: Tenant) -> None:
    """Held: a watcher id means something only with its sandbox. Alice, holding Bob's watcher id,
    can neither poll nor remove it through her own sandbox nor through Bob's."""
    bobs, mine = bob.create(memory_mb=128), alice.create(memory_mb=128)
    try:
        r = bob.w("POST", f"/v1/sandboxes/{bobs}/watchers", {"path": "/tmp"})
        assert r.status_code == 201, r.text
        wid = r.json()["watcher_id"]
        bob.sh(bobs, "echo secret > /tmp/bob-was-here")
        for sid in (mine, bobs):
            for method, suffix in (("GET", "/events"), ("DELETE", "")):
                r = alice.w(method, f"/v1/sandboxes/{sid}/watchers/{wid}{suffix}")
                assert r.status_code == 404, (sid == mine, method, r.text)
        r = bob.w("GET", f"/v1/sandboxes/{bobs}/watchers/{wid}/events")
        assert r.status_code == 200 and "bob-was-here" in r.text, r.text  # untouched, unread
    finally:
        bob.w("DELETE", f"/v1/sandboxes/{bobs}")
        alice.w("DELETE", f"/v1/sandboxes/{mine}")


# ------------------------------------------------------------ another team's public port, held


# Bob's public web server: a page, and a file larger than every buffer between it and a client.
SERVER = (
    "echo bobs-page > /tmp/index.html; head -c 20000000 /dev/zero > /tmp/big; "
    "cd /tmp && (setsid python3 -m http.server 8000 >/dev/null 2>&1 &); "
    "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' "
    "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
)
ATTACKERS = 136  # past WARREN_PROXY_MAX_CONNS_PER_SANDBOX (128)


def _slow_reader(stack: ExitStack, addr: tuple[str, int], request: bytes) -> socket.socket:
    """A client that asks for the big file and reads nothing (a small receive window)."""
    s = stack.enter_context(socket.socket())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.1", 0))
    s.connect(addr)
    s.sendall(request)
    return s


def _status(s: socket.socket) -> int:
    s.settimeout(60)
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            return 0
        head += chunk
    return int(head.split()[1])


@pytest.mark.parametrize("via", ["path", "e2b"])
def test_one_address_cannot_hold_every_slot_of_a_public_port(
    platform: Platform, alice: Tenant, bob: Tenant, via: str
) -> None:
    """Found: the proxy's cap on connections per sandbox (128 per CP process) was first come,
    first served, so Alice, from one address, with 136 requests for a large file she never reads,
    kept every other visitor of Bob's public port at 429 (measured: for ~10-15 s a wave, repeated
    at will; the CP grew ~190 MiB for 130 of them, within its per-connection bound). Also an
    E2B sandbox, every port of which is public by default (``allowPublicTraffic``). Now one client
    address holds at most a quarter of a sandbox's connections: Bob's visitors still get in."""
    if via == "path":
        sid = bob.create(memory_mb=256)
        r = bob.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [8000]})
        assert r.status_code == 200, r.text
    else:
        r = e2b(platform, bob, "POST", "/sandboxes", {"templateID": "minimal", "timeout": 600})
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
    base = platform.url if via == "path" else platform.cp.e2b_url
    host, port = base.split("//")[1].split(":")
    if via == "path":
        prefix, extra = f"/v1/sandboxes/{sid}/ports/8000", b""
    else:
        prefix, extra = "", f"E2b-Sandbox-Id: {sid}\r\nE2b-Sandbox-Port: 8000\r\n".encode()
    try:
        bob.sh(sid, SERVER)
        request = f"GET {prefix}/big HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n"
        with ExitStack() as stack:
            held = [_slow_reader(stack, (host, int(port)), request) for _ in range(ATTACKERS)]
            statuses = [_status(s) for s in held]
            assert set(statuses) <= {200, 429}, statuses
            assert statuses.count(429) >= ATTACKERS - 128, statuses  # the cap held, at least
            # A visitor from another address, while Alice's readers are open.
            visitor = httpx.HTTPTransport(local_address="127.0.0.2")
            headers = {} if via == "path" else {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8000"}
            with httpx.Client(base_url=base, transport=visitor, timeout=60) as c:
                r = c.get(f"{prefix}/index.html", headers=headers)
            assert (r.status_code, r.text) == (200, "bobs-page\n"), (r.status_code, r.text[:300])
    finally:
        bob.w("DELETE", f"/v1/sandboxes/{sid}")


# ------------------------------------------------------------ preview host names across teams

DOMAIN = "preview.test"
# Each sandbox's private port 8000 answers its own id.
ID_SERVER = (
    "hostname > /tmp/index.html; cd /tmp && (setsid python3 -m http.server 8000 >/dev/null 2>&1 &); "
    "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' "
    "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
)


@pytest.fixture(scope="module")
def preview_proxy(platform: Platform) -> Iterator[str]:
    """``warren proxy`` with previews by host name, beside the shared platform's CP."""
    with running_proxy(platform, env={"WARREN_PREVIEW_DOMAIN": DOMAIN}) as proxy:
        yield proxy.url


def test_preview_host_names_and_cookies_across_teams(preview_proxy: str, alice: Tenant, bob: Tenant) -> None:
    """Held: Alice's signed URL and the cookie it gives her open her own port only. On Bob's
    private port by host name, with her cookie, her signature, her host in ``X-Forwarded-Host``,
    the name in capitals or with a port, she gets 401/403 and never his page; a trailing dot,
    another label in front or a look-alike letter route nowhere."""
    mine, bobs = alice.create(memory_mb=128), bob.create(memory_mb=128)
    try:
        alice.sh(mine, ID_SERVER)
        bob.sh(bobs, ID_SERVER)
        r = alice.w("POST", f"/v1/sandboxes/{mine}/preview/signed-url", {"port": 8000, "expires": 600})
        assert r.status_code == 200, r.text
        query = r.json()["url"].split("?", 1)[1]
        with httpx.Client(base_url=preview_proxy, timeout=60) as c:
            r = c.get(f"/?{query}", headers={"Host": f"8000-{mine}.{DOMAIN}"})
            assert r.status_code == 302, r.text
            cookie = r.cookies["warren_preview"]
            jar = {"Cookie": f"warren_preview={cookie}"}
            r = c.get("/index.html", headers={"Host": f"8000-{mine}.{DOMAIN}", **jar})
            assert (r.status_code, r.text) == (200, mine + "\n")  # her own: the cookie works
            for host, extra, want in (
                (f"8000-{bobs}.{DOMAIN}", jar, 401),
                (f"8000-{bobs}.{DOMAIN}:80", jar, 401),
                (f"8000-{bobs}.{DOMAIN.upper()}", jar, 401),
                (f"8000-{bobs.upper()}.{DOMAIN}", jar, 401),
                (f"8000-{bobs}.{DOMAIN}", {**jar, "X-Forwarded-Host": f"8000-{mine}.{DOMAIN}"}, 401),
                (f"8001-{mine}.{DOMAIN}", jar, 401),  # her cookie is for port 8000 only
                (f"08000-{bobs}.{DOMAIN}", jar, 401),
                (f"8000-{bobs}.{DOMAIN}.", jar, 404),
                (f"x.8000-{bobs}.{DOMAIN}", jar, 404),
                (f"8000-{bobs}.preview\u0456test".encode("idna").decode(), jar, 404),
            ):
                r = c.get("/index.html", headers={"Host": host, **extra})
                assert r.status_code == want, (host, r.status_code, r.text)
                assert bobs not in r.text.lower().replace(f"sandbox {bobs}", "")
            r = c.get(f"/index.html?{query}", headers={"Host": f"8000-{bobs}.{DOMAIN}"})
            assert r.status_code == 403, r.text  # her signature names her sandbox
            forwarded = {"X-Forwarded-Host": f"8000-{bobs}.{DOMAIN}", **jar}
            r = c.get("/index.html", headers={"Host": f"8000-{mine}.{DOMAIN}", **forwarded})
            assert (r.status_code, r.text) == (200, mine + "\n")  # the Host decides, nothing else
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{mine}")
        bob.w("DELETE", f"/v1/sandboxes/{bobs}")


# ------------------------------------------------------------ nameless cookies from a sandbox

# Alice's path-routed server plants cookies a browser stores under no name: it sends their value
# alone in its Cookie header (``warren_oauth_token=...``, which the dashboard's OAuth landing turns
# into a session), and a repeated Path (a browser keeps the last).
PLANTER = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200)
        for c in ("=warren_oauth_token=planted; Path=/auth", "=warren_session=planted; Path=/",
                  " warren_session=planted; Path=/", "a=1; Path=/; Path=/auth",
                  "b=1; Path=/v1/sandboxes/x/ports/8000/../../../../auth"):
            self.send_header("Set-Cookie", c)
        self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""


def test_nameless_cookies_from_a_sandbox_stay_on_its_port(platform: Platform, alice: Tenant) -> None:
    """Held: whatever a path-routed sandbox's ``Set-Cookie`` looks like (no name, a leading space,
    two ``Path`` attributes), the browser is told to keep it under that port's path only, where no
    dashboard or sign-in route is."""
    sid = alice.create(memory_mb=128)
    try:
        start = "(setsid python3 /tmp/p.py >/dev/null 2>&1 &)"
        alice.sh(sid, f"cat > /tmp/p.py <<'EOF'\n{PLANTER}\nEOF\n{start}")
        r = alice.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [8000]})
        assert r.status_code == 200, r.text
        prefix = f"/v1/sandboxes/{sid}/ports/8000"
        with httpx.Client(base_url=platform.url, timeout=60) as c:
            for _ in range(100):
                r = c.get(f"{prefix}/")
                if r.status_code == 200:
                    break
                time.sleep(0.3)
            assert r.status_code == 200, r.text
            planted = r.headers.get_list("set-cookie")
            assert len(planted) == 4, planted  # the leading-space warren_session is dropped
            for cookie in planted:
                paths = [a.strip()[5:] for a in cookie.split(";") if a.strip().lower().startswith("path=")]
                assert paths and all(p == prefix or p.startswith(prefix + "/") for p in paths), cookie
                assert paths[-1] == prefix or paths[-1].startswith(prefix + "/"), cookie
                assert "domain" not in cookie.lower(), cookie
                assert not cookie.strip().lower().startswith("warren_"), cookie
            # An httpx jar (path-matched like a browser's): nothing reaches the sign-in landing.
            r = c.get("/auth/github/callback", follow_redirects=False)
            assert "planted" not in (r.request.headers.get("cookie") or ""), r.request.headers
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")
