"""Preview URLs end to end (docs/networking.md §3): a CP process, a real agent, real sandboxes
whose servers listen on 127.0.0.1 inside them, reached through the CP's proxy by path and by
host name."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.cp import PASSWORD
from tests.harness.fixtures import PREVIEW_DOMAIN
from tests.harness.platform import Platform
from tests.harness.warren_proxy import running_proxy

# The shared platform has a preview domain (host-name routing); this module's sandboxes are its team's.
pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

DOMAIN = PREVIEW_DOMAIN

# One app for what http.server cannot do: a large download, an upload counter, the headers it
# got, and server-sent events that wait for a file between two events.
APP = r"""
import http.server, json, os, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/big"):
            n = 200 << 20
            self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
            block = b"z" * (1 << 20)
            for _ in range(n >> 20): self.wfile.write(block)
        elif self.path.startswith("/headers"):
            body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        elif self.path == "/sse":
            self.send_response(200); self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close"); self.end_headers()
            self.wfile.write(b"data: one\n\n"); self.wfile.flush()
            while not os.path.exists("/tmp/go"): time.sleep(0.02)
            self.wfile.write(b"data: two\n\n"); self.wfile.flush()
            self.close_connection = True
        else:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
    def do_POST(self):
        n = 0
        if self.headers.get("Transfer-Encoding") == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if not size: self.rfile.readline(); break
                n += len(self.rfile.read(size)); self.rfile.readline()
        else:
            n = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        body = json.dumps({"received": n, "te": self.headers.get("Transfer-Encoding")}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H).serve_forever()
"""

# A stdlib WebSocket echo server (RFC 6455: handshake, masked client frames, unmasked replies).
WS_ECHO = r"""
import base64, hashlib, socket, struct, threading
def serve(c):
    req = b""
    while b"\r\n\r\n" not in req: req += c.recv(4096)
    lines = req.split(b"\r\n")
    key = [l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
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
        if op in (1, 2):
            n = len(data)
            size = bytes([n]) if n < 126 else b"\x7e" + struct.pack(">H", n) if n < 65536 else (
                b"\x7f" + struct.pack(">Q", n))
            c.sendall(bytes([0x80 | op]) + size + data)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8002)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class Sbx:
    def __init__(self, p: Platform, http: httpx.Client, info: dict[str, object]) -> None:
        self.p, self.http = p, http
        self.id = str(info["id"])
        self.token = str(info["traffic_token"])

    def sh(self, script: str, stdin: str | None = None) -> dict[str, object]:
        body: dict[str, object] = {"cmd": "sh", "args": ["-c", script], "timeout_sec": 60}
        if stdin is not None:
            body["stdin"] = stdin
        r = self.http.post(f"/v1/sandboxes/{self.id}/exec", json=body, headers=self.p.headers)
        assert r.status_code == 200, r.text
        out: dict[str, object] = r.json()
        return out

    def url(self, port: int, path: str = "/") -> str:
        return f"/v1/sandboxes/{self.id}/ports/{port}{path}"

    def tok(self) -> dict[str, str]:
        return {"X-Warren-Traffic-Token": self.token}


@pytest.fixture(scope="module")
def http(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        yield c


def _sandbox(p: Platform, http: httpx.Client) -> Sbx:
    r = http.post("/v1/sandboxes", json={"memory_mb": 256}, headers=p.headers)
    assert r.status_code == 201, r.text
    assert r.json()["traffic_token"].startswith("wtt_")
    return Sbx(p, http, r.json())


def _wait_port(sb: Sbx, port: int) -> None:
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()\""
    deadline = time.monotonic() + 30
    while sb.sh(probe)["exit_code"] != 0:
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.1)


def serve_apps(s: Sbx, hello: str) -> None:
    """The sandbox's servers, up: http.server on 8000 (``/hello.txt`` says ``hello``), the app
    on 8001, the WebSocket echo on 8002."""
    s.sh(f"mkdir -p /srv && echo {hello} > /srv/hello.txt")
    s.sh("cat > /tmp/app.py", stdin=APP)
    s.sh("cat > /tmp/ws.py", stdin=WS_ECHO)
    s.sh(
        "cd /srv && (setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &);"
        "(setsid python3 /tmp/app.py >/dev/null 2>&1 &); (setsid python3 /tmp/ws.py >/dev/null 2>&1 &)"
    )
    for port in (8000, 8001, 8002):
        _wait_port(s, port)


@pytest.fixture(scope="module")
def sb(platform: Platform, http: httpx.Client) -> Sbx:
    s = _sandbox(platform, http)
    serve_apps(s, "hello-from-sandbox")
    return s


@pytest.fixture(scope="module")
def other(platform: Platform, http: httpx.Client) -> Sbx:
    return _sandbox(platform, http)


def _err(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def test_both_routings_reach_a_server_on_the_sandbox_loopback(sb: Sbx, http: httpx.Client) -> None:
    r = http.get(sb.url(8000, "/hello.txt"), headers=sb.tok())
    assert r.status_code == 200, r.text
    assert r.text == "hello-from-sandbox\n"
    r = http.get("/hello.txt", headers={**sb.tok(), "Host": f"8000-{sb.id}.{DOMAIN}"})
    assert r.status_code == 200, r.text
    assert r.text == "hello-from-sandbox\n"


def test_access_rules(sb: Sbx, other: Sbx, http: httpx.Client) -> None:
    r = http.get(sb.url(8000, "/hello.txt"))
    assert (r.status_code, _err(r)) == (401, "traffic_token_required")
    r = http.get("/hello.txt", headers={"Host": f"8000-{sb.id}.{DOMAIN}"})
    assert (r.status_code, _err(r)) == (401, "traffic_token_required")
    r = http.get(sb.url(8000, "/hello.txt"), headers=other.tok())
    assert (r.status_code, _err(r)) == (403, "traffic_token_invalid")
    # An API key is no traffic token; an unknown sandbox is a 404.
    r = http.get(sb.url(8000, "/hello.txt"), headers=sb.p.headers)
    assert r.status_code == 401
    r = http.get("/v1/sandboxes/sb-0000000000000000000000000/ports/8000/", headers=sb.tok())
    assert r.status_code == 404


def test_the_proxy_strips_its_credentials(sb: Sbx, http: httpx.Client) -> None:
    r = http.get(
        sb.url(8001, "/headers?a=1"), headers={**sb.tok(), "Cookie": "warren_preview=1.x; mine=kept"}
    )
    assert r.status_code == 200, r.text
    got = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert r.json()["path"] == "/headers?a=1"
    assert "x-warren-traffic-token" not in got
    assert got["cookie"] == "mine=kept"
    assert got["x-forwarded-prefix"] == f"/v1/sandboxes/{sb.id}/ports/8001"


def test_public_port(sb: Sbx, http: httpx.Client) -> None:
    r = http.patch(f"/v1/sandboxes/{sb.id}", json={"public_ports": [8000]}, headers=sb.p.headers)
    assert r.status_code == 200, r.text
    assert r.json()["public_ports"] == [8000]
    try:
        assert http.get(sb.url(8000, "/hello.txt")).status_code == 200
        assert http.get(sb.url(8001, "/headers")).status_code == 401
    finally:
        http.patch(f"/v1/sandboxes/{sb.id}", json={"public_ports": []}, headers=sb.p.headers)
    assert http.get(sb.url(8000, "/hello.txt")).status_code == 401
    for bad in ([0], [70000], list(range(1, 40))):
        r = http.patch(f"/v1/sandboxes/{sb.id}", json={"public_ports": bad}, headers=sb.p.headers)
        assert r.status_code == 400, r.text


def test_closed_port_is_502_port_not_open(sb: Sbx, http: httpx.Client) -> None:
    r = http.get(sb.url(8999, "/"), headers=sb.tok())
    assert (r.status_code, _err(r)) == (502, "port_not_open")


def test_websocket_echo_end_to_end(sb: Sbx, platform: Platform) -> None:
    url = platform.url.replace("http://", "ws://") + sb.url(8002, "/echo")
    with ws_connect(url, additional_headers=sb.tok()) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        blob = os.urandom(100_000)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
    with pytest.raises(Exception) as ei:
        ws_connect(url).close()
    assert "401" in str(ei.value)
    closed = platform.url.replace("http://", "ws://") + sb.url(8999, "/")
    with pytest.raises(Exception) as ei:
        ws_connect(closed, additional_headers=sb.tok()).close()
    assert "502" in str(ei.value)


def test_streaming_upload_sse_and_a_200_mib_download_in_constant_memory(
    sb: Sbx, platform: Platform, http: httpx.Client
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"u" * (1 << 20)

    r = http.post(sb.url(8001, "/upload"), content=chunks(), headers=sb.tok())
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 20 << 20, "te": "chunked"}

    # Server-sent events arrive as sent: the second only after the test lets the server go on.
    with http.stream("GET", sb.url(8001, "/sse"), headers=sb.tok()) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "data: one"
        sb.sh("touch /tmp/go")
        assert [x for x in lines if x] == ["data: two"]

    before = platform.cp.rss()
    got = 0
    with http.stream("GET", sb.url(8001, "/big"), headers=sb.tok()) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_raw(1 << 20):
            got += len(chunk)
    assert got == 200 << 20
    assert platform.cp.rss() - before < 64 << 20


def test_paused_is_409_and_auto_resume_wakes_it(sb: Sbx, http: httpx.Client) -> None:
    r = http.post(f"/v1/sandboxes/{sb.id}/pause", headers=sb.p.headers)
    assert r.status_code == 200, r.text
    r = http.get(sb.url(8000, "/hello.txt"), headers=sb.tok())
    assert (r.status_code, _err(r)) == (409, "sandbox_paused")
    r = http.patch(f"/v1/sandboxes/{sb.id}", json={"auto_resume": True}, headers=sb.p.headers)
    assert r.status_code == 200 and r.json()["auto_resume"] is True
    r = http.get(sb.url(8000, "/hello.txt"), headers=sb.tok())
    assert r.status_code == 200, r.text
    assert http.get(f"/v1/sandboxes/{sb.id}", headers=sb.p.headers).json()["status"] == "running"


def test_signed_url(sb: Sbx, other: Sbx, platform: Platform, http: httpx.Client) -> None:
    r = http.post(
        f"/v1/sandboxes/{sb.id}/preview/signed-url",
        json={"port": 8000, "expires": 3600, "path": "/hello.txt"}, headers=sb.p.headers,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith(platform.url + sb.url(8000, "/hello.txt?warren_sig="))
    with httpx.Client(timeout=30) as browser:  # a fresh cookie jar
        r = browser.get(url)
        assert r.status_code == 302
        assert r.headers["location"] == sb.url(8000, "/hello.txt")
        assert "HttpOnly" in r.headers["set-cookie"]
        assert f"Path={sb.url(8000, '/')}" in r.headers["set-cookie"]
        r = browser.get(url, follow_redirects=True)
        assert r.status_code == 200 and r.text == "hello-from-sandbox\n"
        assert browser.get(platform.url + sb.url(8000, "/")).status_code == 200  # the cookie
    # Not for another port or another sandbox.
    for wrong in (url.replace("/ports/8000/", "/ports/8001/"), url.replace(sb.id, other.id)):
        r = httpx.get(wrong, timeout=60)
        assert (r.status_code, _err(r)) == (403, "signed_url_invalid")
    # Until it expires.
    r = http.post(
        f"/v1/sandboxes/{sb.id}/preview/signed-url", json={"port": 8000, "expires": 1}, headers=sb.p.headers
    )
    short = r.json()["url"]
    deadline = time.monotonic() + 60
    while (r := httpx.get(short, timeout=60)).status_code != 403:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _err(r) == "signed_url_expired"


def test_rotation_voids_the_old_token_and_its_signed_urls(sb: Sbx, http: httpx.Client) -> None:
    url = http.post(
        f"/v1/sandboxes/{sb.id}/preview/signed-url", json={"port": 8000}, headers=sb.p.headers
    ).json()["url"]
    r = http.post(f"/v1/sandboxes/{sb.id}/traffic-token", headers=sb.p.headers)
    assert r.status_code == 200, r.text
    new = r.json()["traffic_token"]
    assert http.get(sb.url(8000, "/hello.txt"), headers=sb.tok()).status_code == 403
    assert httpx.get(url, timeout=60).status_code == 403
    sb.token = new
    assert http.get(sb.url(8000, "/hello.txt"), headers=sb.tok()).status_code == 200


def test_another_team_gets_404(sb: Sbx, platform: Platform, http: httpx.Client) -> None:
    email = f"other{time.monotonic_ns()}@example.com"
    r = http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "O"})
    assert r.status_code == 201, r.text
    h = {"Authorization": f"Bearer {r.json()['token']}"}
    for method, path, body in (
        ("PATCH", f"/v1/sandboxes/{sb.id}", {"public_ports": [8000]}),
        ("POST", f"/v1/sandboxes/{sb.id}/traffic-token", None),
        ("POST", f"/v1/sandboxes/{sb.id}/preview/signed-url", {"port": 8000}),
        ("GET", f"/v1/sandboxes/{sb.id}/preview", None),
    ):
        r = http.request(method, path, json=body, headers=h)
        assert r.status_code == 404, (path, r.text)


def test_warren_proxy_serves_the_same_routes_alone(sb: Sbx, platform: Platform) -> None:
    with (
        running_proxy(platform, env={"WARREN_PREVIEW_DOMAIN": DOMAIN}) as proxy,
        httpx.Client(base_url=proxy.url, timeout=30) as c,
    ):
        r = c.get(sb.url(8000, "/hello.txt"), headers=sb.tok())
        assert (r.status_code, r.text) == (200, "hello-from-sandbox\n")
        r = c.get("/hello.txt", headers={**sb.tok(), "Host": f"8000-{sb.id}.{DOMAIN}"})
        assert r.status_code == 200
        assert c.get(sb.url(8000, "/hello.txt")).status_code == 401
        assert c.get("/v1/sandboxes").status_code == 404  # the API is not served here


def test_sdk_get_host_and_get_url(sb: Sbx, platform: Platform) -> None:
    from warren import Sandbox

    sbx = Sandbox.connect(sb.id, **platform.sdk())  # not `with`: leaving that kills it
    try:
        assert sbx.get_host(8000) == f"8000-{sb.id}.{DOMAIN}"
        url = sbx.get_url(8000, expires=600, path="/hello.txt")
        r = httpx.get(url, follow_redirects=True, timeout=60)  # as a browser or curl -L would
        assert (r.status_code, r.text) == (200, "hello-from-sandbox\n")
        assert sbx.set_preview(auto_resume=False)["auto_resume"] is False
    finally:
        sbx.close()


def test_dashboard_open_port_gives_a_signed_link(sb: Sbx, platform: Platform) -> None:
    with httpx.Client(base_url=platform.url, headers={"Origin": platform.url}, timeout=60) as c:
        token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/login").text)
        assert token is not None
        form = {"csrf_token": token[1], "email": platform.email, "password": PASSWORD}
        assert c.post("/login", data=form).status_code in (200, 303)
        page = c.get(f"/dashboard/sandboxes/{sb.id}").text
        assert 'data-testid="open-port"' in page
        token = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert token is not None
        r = c.post(f"/dashboard/actions/sandboxes/{sb.id}/open-port", json={"port": 8000},
                   headers={"X-CSRF-Token": token[1]})  # fmt: skip
        assert r.status_code == 200, r.text
    r = httpx.get(r.json()["redirect"], follow_redirects=True, timeout=60)  # the browser follows it
    assert r.status_code == 200
    assert '<a href="hello.txt">' in r.text  # http.server's listing of /srv
