"""Sandbox ports through the E2B listener (docs/e2b.md §4): a server in a sandbox reached with
``E2b-Sandbox-Id`` / ``E2b-Sandbox-Port``, public by default, the traffic token required when the
sandbox was created with ``allowPublicTraffic: false``, and E2B's 502s for a sandbox that is not
there and a port nothing listens on."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.harness.fixtures import PREVIEW_DOMAIN
from tests.harness.platform import Platform

# The shared platform has a preview domain (host-name routing); this module's sandboxes are its team's.
pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PORT = 8080
# Bound to 127.0.0.1 on purpose: the proxy dials from inside the sandbox's network namespace.
# /headers answers the request's headers; /stream three NDJSON lines, flushed one by one.
SERVER = """
import base64, hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def websocket_echo(self):
        key = self.headers["Sec-WebSocket-Key"] + WS_GUID
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        head = self.rfile.read(2)
        mask = self.rfile.read(4)
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(self.rfile.read(head[1] & 0x7F)))
        out = b"echo:" + data
        self.wfile.write(bytes([0x81, len(out)]) + out)
        self.wfile.flush()
        self.close_connection = True
    def do_GET(self):
        if self.path == "/ws":
            return self.websocket_echo()
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                line = json.dumps({"n": i}).encode() + b"\\n"
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\\r\\n\\r\\n")
            return
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


DOMAIN = PREVIEW_DOMAIN


@dataclass(frozen=True)
class Box:
    id: str
    traffic_token: str | None
    envd_token: str


def _create(platform: Platform, *, public: bool) -> Box:
    body: dict[str, object] = {"templateID": "minimal", "timeout": 600}
    if not public:
        body["network"] = {"allowPublicTraffic": False}
    r = httpx.post(
        platform.cp.e2b_url + "/v2/sandboxes", json=body, headers={"X-API-KEY": platform.api_key}, timeout=120
    )
    assert r.status_code == 201, r.text
    info = r.json()
    return Box(info["sandboxID"], info.get("trafficAccessToken"), info["envdAccessToken"])


def _kill(platform: Platform, box: Box) -> httpx.Response:
    url = f"{platform.cp.e2b_url}/sandboxes/{box.id}"
    return httpx.delete(url, headers={"X-API-KEY": platform.api_key}, timeout=60)


def _serve(platform: Platform, box: Box) -> None:
    from warren.sdk import Sandbox

    sbx = Sandbox.connect(box.id, **platform.sdk())
    code = base64.b64encode(SERVER.encode()).decode()
    sbx.commands.run(
        f"echo {code} | base64 -d > /tmp/server.py && exec python3 /tmp/server.py {PORT}", background=True
    )


def _get(platform: Platform, sandbox_id: str, path: str = "/headers", **headers: str) -> httpx.Response:
    h = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(headers.pop("port", PORT)), **headers}
    return httpx.get(platform.cp.e2b_url + path, headers=h, timeout=30)


def _wait_listening(platform: Platform, box: Box) -> None:
    extra = {"E2B-Traffic-Access-Token": box.traffic_token} if box.traffic_token else {}
    for _ in range(300):
        r = _get(platform, box.id, **extra)
        if r.status_code == 200:
            return
        assert "port is not open" in r.json()["message"], r.text
        time.sleep(0.1)  # the server is starting: poll again
    raise AssertionError("the server in the sandbox never listened")


@pytest.fixture(scope="module")
def boxes(platform: Platform) -> Iterator[tuple[Box, Box]]:
    public, private = _create(platform, public=True), _create(platform, public=False)
    try:
        for box in (public, private):
            _serve(platform, box)
        for box in (public, private):
            _wait_listening(platform, box)
        yield public, private
    finally:
        for box in (public, private):
            httpx.delete(
                f"{platform.cp.e2b_url}/sandboxes/{box.id}",
                headers={"X-API-KEY": platform.api_key},
                timeout=60,
            )


def test_public_by_default(platform: Platform, boxes: tuple[Box, Box]) -> None:
    public, _ = boxes
    assert public.traffic_token is None
    r = _get(platform, public.id)
    assert r.status_code == 200
    seen = r.json()
    assert seen["e2b-sandbox-port"] == str(PORT)


def test_tokens_never_reach_the_sandbox(platform: Platform, boxes: tuple[Box, Box]) -> None:
    _, private = boxes
    assert private.traffic_token
    r = _get(
        platform,
        private.id,
        **{"E2B-Traffic-Access-Token": private.traffic_token, "X-Access-Token": private.envd_token},
    )
    assert r.status_code == 200
    seen = r.json()
    assert private.traffic_token not in json.dumps(seen)
    assert private.envd_token not in json.dumps(seen)


def test_private_sandbox_needs_its_traffic_token(platform: Platform, boxes: tuple[Box, Box]) -> None:
    _, private = boxes
    r = _get(platform, private.id)
    assert r.status_code == 401 and r.json()["code"] == 401
    r = _get(platform, private.id, **{"E2B-Traffic-Access-Token": "wtt_" + "x" * 43})
    assert r.status_code == 403 and r.json()["code"] == 403
    # The envd token is not a traffic token.
    r = _get(platform, private.id, **{"X-Access-Token": private.envd_token})
    assert r.status_code == 401
    assert private.traffic_token
    assert (
        _get(platform, private.id, **{"E2B-Traffic-Access-Token": private.traffic_token}).status_code == 200
    )


def test_streamed_response(platform: Platform, boxes: tuple[Box, Box]) -> None:
    public, _ = boxes
    h = {"E2b-Sandbox-Id": public.id, "E2b-Sandbox-Port": str(PORT)}
    with httpx.stream("GET", platform.cp.e2b_url + "/stream", headers=h, timeout=30) as r:
        assert r.status_code == 200
        assert [json.loads(line) for line in r.iter_lines()] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_websocket(platform: Platform, boxes: tuple[Box, Box]) -> None:
    from websockets.sync.client import connect

    public, _ = boxes
    url = platform.cp.e2b_url.replace("http://", "ws://") + "/ws"
    h = {"E2b-Sandbox-Id": public.id, "E2b-Sandbox-Port": str(PORT)}
    with connect(url, additional_headers=h, open_timeout=30) as ws:
        ws.send("hi")
        assert ws.recv(timeout=30) == "echo:hi"


def test_host_name_routing(platform: Platform, boxes: tuple[Box, Box]) -> None:
    """``{port}-{sandbox_id}.{domain}``, what ``get_host(port)`` names (no E2b-Sandbox-* headers)."""
    public, private = boxes
    r = httpx.get(
        platform.cp.e2b_url + "/headers", headers={"Host": f"{PORT}-{public.id}.{DOMAIN}"}, timeout=30
    )
    assert r.status_code == 200 and r.json()["host"] == f"{PORT}-{public.id}.{DOMAIN}"
    r = httpx.get(
        platform.cp.e2b_url + "/headers", headers={"Host": f"{PORT}-{private.id}.{DOMAIN}"}, timeout=30
    )
    assert r.status_code == 401
    r = httpx.get(platform.cp.e2b_url + "/", headers={"Host": f"{PORT}-sb-{'0' * 25}.{DOMAIN}"}, timeout=30)
    assert r.status_code == 502 and "was not found" in r.json()["message"]


def test_closed_port_is_a_502_port_is_not_open(platform: Platform, boxes: tuple[Box, Box]) -> None:
    public, _ = boxes
    r = _get(platform, public.id, port="9")
    assert r.status_code == 502
    body = r.json()
    assert body["code"] == 502 and "port is not open" in body["message"]


def test_unknown_sandbox_is_a_502_not_found(platform: Platform) -> None:
    for sid in ("sb-" + "0" * 25, "nonsense"):
        r = _get(platform, sid)
        assert r.status_code == 502
        assert "was not found" in r.json()["message"]


def test_bad_port(platform: Platform, boxes: tuple[Box, Box]) -> None:
    public, _ = boxes
    for port in ("0", "99999", "x"):
        r = _get(platform, public.id, port=port)
        assert r.status_code == 400, (port, r.text)


def test_killed_sandbox_is_a_502_not_found(platform: Platform) -> None:
    box = _create(platform, public=True)
    assert _kill(platform, box).status_code == 204
    r = _get(platform, box.id)
    assert r.status_code == 502 and "was not found" in r.json()["message"]
