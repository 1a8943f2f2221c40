"""Session 11's hostile tenant: a sandbox server that never answers, and clients that leave.

The preview proxy waits for the response head from the sandbox's server. A client that goes
away meanwhile was only noticed once the head came, so a server that accepts and never answers
(or trickles its head a byte at a time) kept each abandoned exchange in the CP for good: its
task, its stream to the agent, the agent's dial into the sandbox, and one of the sandbox's
``WARREN_PROXY_MAX_CONNS_PER_SANDBOX`` slots. Fire-and-forget requests then pile up without
bound in the CP and the agent, and once the slots are gone every later request to any port of
that sandbox is 429 for ever.

The same for a WebSocket upgrade the server never answers.

Expected: an exchange whose client is gone ends, its slot and its dial come back (an upgrade
within ``WARREN_WS_HANDSHAKE_TIMEOUT_S``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup

pytestmark = pytest.mark.root

SLOTS = 6
# An upgrade the server never answers is given up after this (30 s by default): the test waits
# it out, so it is short here; what is proved (the slots come back) is the same.
HANDSHAKE_S = 5
HANDSHAKE_ENV = {"WARREN_WS_HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_S)}

# 8001 answers; 8002 accepts and never answers; 8003 sends its head one byte a second.
SERVERS = r"""
import http.server, socket, threading, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
threading.Thread(target=http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H).serve_forever).start()
def mute(c):
    time.sleep(3600)
def trickle(c):
    for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        c.sendall(bytes([b])); time.sleep(1)
for port, fn in ((8002, mute), (8003, trickle)):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(512)
    def serve(s=s, fn=fn):
        while True:
            c, _ = s.accept(); threading.Thread(target=fn, args=(c,), daemon=True).start()
    threading.Thread(target=serve).start()
"""


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(
        db_url, platform_dir, {"WARREN_PROXY_MAX_CONNS_PER_SANDBOX": str(SLOTS), **HANDSHAKE_ENV}
    ) as p:
        yield p


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    return signup(platform.url, "mallory")


@pytest.fixture(scope="module")
def ports_url(platform: Platform, mallory: Tenant) -> str:
    sb = mallory.create()
    mallory.sh(
        sb, "cat > /tmp/s.py <<'EOF'\n" + SERVERS + "EOF\n(setsid python3 /tmp/s.py >/dev/null 2>&1 &)"
    )
    r = mallory.w("PATCH", f"/v1/sandboxes/{sb}", {"public_ports": [8001, 8002, 8003]})
    assert r.status_code == 200, r.text
    url = f"{platform.url}/v1/sandboxes/{sb}/ports"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/8001/", timeout=30).status_code == 200:
            return url
        time.sleep(0.2)
    raise AssertionError("the sandbox's server did not come up")


UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


def _abandon(url: str, port: int, websocket: bool = False) -> None:
    """SLOTS GETs (or WebSocket upgrades) at once, whose clients wait a moment for the head,
    then hang up: as many as the sandbox has slots, so each round can take them all."""
    host, _, rest = url.removeprefix("http://").partition("/")
    addr, _, p = host.partition(":")
    extra = UPGRADE + "Sec-WebSocket-Version: 13\r\n" if websocket else ""
    with contextlib.ExitStack() as stack:
        connect = lambda: socket.create_connection((addr, int(p)), timeout=30)  # noqa: E731
        socks = [stack.enter_context(connect()) for _ in range(SLOTS)]
        for s in socks:
            s.sendall(f"GET /{rest}/{port}/ HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        moment = time.monotonic() + 1  # one moment for them all (it was 0.5 s each in turn)
        for s in socks:
            s.settimeout(max(0.01, moment - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                s.recv(1)


def _served(url: str) -> int:
    return httpx.get(f"{url}/8001/", timeout=30).status_code


@pytest.mark.parametrize(("port", "websocket"), [(8002, False), (8003, False), (8002, True)])
def test_abandoned_exchanges_give_their_slots_back(ports_url: str, port: int, websocket: bool) -> None:
    for _ in range(3):  # 3 * SLOTS abandoned exchanges
        _abandon(ports_url, port, websocket)
    # An upgrade the server never answers is given up after HANDSHAKE_S (the proxy cannot see
    # its client leave before it accepts).
    deadline = time.monotonic() + 90
    while _served(ports_url) != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _served(ports_url) == 200, "the sandbox's slots stayed with clients that had left"


def test_ports_that_cannot_exist_are_404_not_an_agent_error(platform: Platform, mallory: Tenant) -> None:
    """Port 0 and ports past 65535 reached the agent, whose refusal came back as 502
    ``agent_error`` (a client's mistake blamed on the platform)."""
    r = mallory.w("POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sb, token = r.json()["id"], r.json()["traffic_token"]
    headers = {"X-Warren-Traffic-Token": token}
    for port in ("0", "00000", "65536", "99999"):
        r = httpx.get(f"{platform.url}/v1/sandboxes/{sb}/ports/{port}/", headers=headers, timeout=30)
        assert r.status_code == 404, (port, r.status_code, r.text[:200])
        host = {"Host": f"{port}-{sb}.preview.test"}
        r = httpx.get(f"{platform.url}/", headers={**headers, **host}, timeout=30)
        assert r.status_code < 500, (port, r.status_code, r.text[:200])
    r = httpx.get(f"{platform.url}/v1/sandboxes/{sb}/ports/65535/", headers=headers, timeout=30)
    assert r.status_code == 502 and r.json()["error"]["code"] == "port_not_open", r.text[:200]
