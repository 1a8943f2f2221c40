"""Session 22: a stream of 1-byte pieces through the preview proxy, against every other tenant's
API on the same CP.

The proxy parses a sandbox's response with h11, and its WebSocket frames with ``websockets``,
on the CP's event loop. A chunked body's every chunk is an event (~5 us of h11 each, the send
to the client a good deal more), and so is every WebSocket message; the proxy went on with what
one read brought (up to 32 KiB: ~5 500 chunks or ~11 000 messages of 1 byte) without letting
the loop go while its client's transport took each piece. The attacker's clients read a few
hundred KB/s (nothing for her); the CP spends a core on them.

As the attacker runs it: her own sandbox's public port answers ``/chunks`` with an endless body
of ``1\\r\\nx\\r\\n`` and ``/msgs`` with a WebSocket of endless 1-byte messages; ``CONNS``
clients read as fast as they can for ``WINDOW_S`` seconds while another team lists its
sandboxes.

Fixed (cp/proxy/http.py, ws.py, pace.py): a connection's parsed events (chunks, frames) are
paced, a burst at once and then so many a second, the loop let go every turn, and all the
connections to one account's sandboxes share a pace of their own; small chunks already read go
to the client in one send, and a WebSocket reads 4 KiB at a time. Expected: each client, and
``MANY`` clients together, get at most the paces' pieces in the window (the time from the
readers' start to the count, which a slow last GET may stretch past ``WINDOW_S``); the CP's CPU
and the other team's median are printed. Measured with 2 clients, before: chunks 244-422 KB in 10 s,
6.4-8.6 s of CP CPU, the other team's median 1.1-2.6 s; messages 339 000-367 000, 7.7 s, 3.1 s.
After: ~45 000 pieces each, 1.0-1.7 s, 4-8 ms. 16 clients paced per connection only: 586 522
pieces, 4.4 s, 296 ms (32: 6.1 s, 343 ms); with the account's pace 177 132, 2.3 s, 7 ms.

The window was 10 s; 4 s since session 27 (the module waited 30 s), each case still failing on
the tree before its fix: chunks 191 824 pieces for one client (bound 31 104), messages 277 289
(31 104), 16 clients without the account's pace 222 015 (129 024).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session15_preview_unread import start_server
from tests.security.test_what_held_api import open_handshake
from warren.cp.proxy import http as proxy_http
from warren.cp.proxy import pace
from warren.cp.proxy import ws as proxy_ws

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PORT = 8000
CONNS = 2
MANY = 16  # one client address may hold 32 of a sandbox's connections
WINDOW_S = 4.0
Reader = Callable[[str, str, list[int], int, threading.Event], None]

# What both session-22 preview servers need: the request's head, and a WebSocket's upgrade.
SERVER_HEAD = r"""
import base64, hashlib, socket, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def read_head(c):
    f = c.makefile("rb")
    path, key = f.readline().split()[1], b""
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"sec-websocket-key":
            key = v.strip()
    return f, path, key
def upgrade(c, key):
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
"""
SERVER = (
    SERVER_HEAD
    + r"""
def serve(c):
    try:
        f, path, key = read_head(c)
        if path.endswith(b"/msgs"):
            upgrade(c, key)
            chunk = b"\x81\x01x" * 10922
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"1\r\nx\r\n" * 8192
        while True:
            c.sendall(chunk)
    except OSError:
        pass
    finally:
        c.close()
"""
)
START = start_server(SERVER)


@pytest.fixture(scope="module")
def prefix(platform: Platform, alice: Tenant) -> Iterator[str]:
    """The path of Alice's public port: ``/chunks`` its endless response, ``/msgs`` its endless
    WebSocket."""
    sid = alice.create(memory_mb=256)
    try:
        r = alice.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
        assert r.status_code == 200, r.text
        alice.sh(sid, START)
        yield f"/v1/sandboxes/{sid}/ports/{PORT}"
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _read_chunks(base: str, prefix: str, got: list[int], i: int, stop: threading.Event) -> None:
    """The body's bytes (one a chunk), read as fast as they come."""
    with httpx.Client(timeout=60) as c, c.stream("GET", f"{base}{prefix}/chunks") as r:
        for data in r.iter_bytes():
            got[i] += len(data)
            if stop.is_set():
                return


def _read_messages(base: str, prefix: str, got: list[int], i: int, stop: threading.Event) -> None:
    """The messages' bytes (one a message), read as fast as they come: raw frames of 3 bytes."""
    s, answer = open_handshake(base, f"{prefix}/msgs", {})
    with s:
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        while not stop.is_set() and (data := s.recv(1 << 20)):
            got[i] += len(data) // 3


@pytest.mark.parametrize(
    ("reader", "burst", "rate", "turn"),
    [
        (_read_chunks, proxy_http.EVENTS_BURST, proxy_http.EVENTS_PER_S, proxy_http.EVENTS_PER_TURN),
        (_read_messages, proxy_ws.FRAMES_BURST, proxy_ws.FRAMES_PER_S, proxy_ws.FRAMES_PER_TURN),
    ],
    ids=["chunks", "messages"],
)
def test_a_stream_of_one_byte_pieces_is_paced(
    platform: Platform, prefix: str, bob: Tenant, reader: Reader, burst: int, rate: float, turn: int
) -> None:
    taken, window = _attack(platform, prefix, bob, reader, CONNS)
    bound = int(1.5 * (burst + window * rate + turn))  # one byte a piece, with a margin
    assert all(0 < n <= bound for n in taken), (taken, bound)


def test_many_connections_share_their_accounts_pace(platform: Platform, prefix: str, bob: Tenant) -> None:
    taken, window = _attack(platform, prefix, bob, _read_chunks, MANY)
    bound = int(1.5 * (pace.OWNER_EVENTS_BURST + window * pace.OWNER_EVENTS_PER_S + MANY * 256))
    assert 0 < sum(taken) <= bound, (sum(taken), bound)


def _attack(
    platform: Platform, prefix: str, bob: Tenant, reader: Reader, conns: int
) -> tuple[list[int], float]:
    """What each of ``conns`` readers got in WINDOW_S while Bob lists his sandboxes, and the
    seconds they had (WINDOW_S, or more when Bob's last GET ended late)."""
    cp = psutil.Process(platform.cp.pid)
    cpu = sum(cp.cpu_times()[:2])
    got, stop = [0] * conns, threading.Event()
    started = time.monotonic()
    args = (platform.url, prefix, got)
    readers = [threading.Thread(target=reader, args=(*args, i, stop), daemon=True) for i in range(conns)]
    for t in readers:
        t.start()
    waits: list[float] = []
    end = time.monotonic() + WINDOW_S
    with bob.client() as c:
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert c.get("/v1/sandboxes").status_code == 200
            waits.append(time.monotonic() - t0)
            time.sleep(0.1)
    taken, window = list(got), max(time.monotonic() - started, WINDOW_S)
    stop.set()
    for t in readers:
        t.join(30)
    median_ms = statistics.median(waits) * 1000
    print(
        f"{conns} readers of 1-byte pieces: {sum(taken)} in all in {window:.1f} s (at most {max(taken)} "
        f"one), CP CPU {sum(cp.cpu_times()[:2]) - cpu:.1f} s, another team's GET median {median_ms:.0f} ms"
    )
    return taken, window
