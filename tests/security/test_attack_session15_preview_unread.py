"""Session 15: preview responses nobody reads, against the CP's memory.

Found in session 14 and left open: a sandbox's server that answers with a large body, and
preview clients that ask for it and never read, held up to ~2 MiB of the CP per connection
(512 connections to 4 sandboxes: +402 MiB). The proxy read the sandbox's bytes off the agent's
data port up to 2 MiB ahead of its client, plus one read of up to 256 KiB, and wrote each piece
it read to the client's transport whole.

As the attacker runs it: her own sandbox serves an endless body on a public port; from four
local addresses (the per-address share of a sandbox's connections is a quarter) she opens
``CONNS`` preview connections, sends the request, and reads nothing, with a small receive
window so the kernel holds little for her.

Expected: the CP's RSS grows by at most ``CONNS`` x 256 KiB plus ``SLACK_MIB`` (what a
connection costs whatever its body: its protocol, parser, task and agent link), and a slow
reader, who stops midway and goes on, gets every byte in order.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import psutil
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_what_held_api import PeakRss

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1024 * 1024
CONNS = 128  # the per-sandbox cap (WARREN_PROXY_MAX_CONNS_PER_SANDBOX's default)
ADDRESSES = [f"127.0.0.{i}" for i in (31, 32, 33, 34)]  # 32 connections each: the share of one
PER_CONN_KIB = 256  # the target: a connection's unread response costs at most this, CP side
SLACK_MIB = 24
BOUND_MIB = CONNS * PER_CONN_KIB // 1024 + SLACK_MIB
PORT = 8000

# GET /<n> answers n bytes, byte i being i % 256, as fast as the client takes them.
SERVER = r"""
import socket, threading
PAT = bytes(range(256)) * 256
def serve(c):
    try:
        f = c.makefile("rb")
        size = int(f.readline().split()[1].rsplit(b"/", 1)[1])
        while f.readline() not in (b"\r\n", b""):
            pass
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while size:
            n = min(size, len(PAT)); c.sendall(PAT[:n]); size -= n
    except OSError:
        pass
    finally:
        c.close()
"""


def start_server(script: str) -> str:
    """A shell command that starts ``script`` in the background on port 8000 of the sandbox (its
    ``serve(c)`` gets each accepted connection, in a thread of its own) and waits until it listens."""
    accept = (
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        's.bind(("127.0.0.1", 8000)); s.listen(512)\n'
        "while True:\n"
        "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
    )
    return (
        "cat > /tmp/s.py <<'EOF'\n" + script + accept + "EOF\n(setsid python3 /tmp/s.py >/dev/null 2>&1 &); "
        "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' "
        "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
    )


START = start_server(SERVER)


@pytest.fixture(scope="module")
def served(platform: Platform, alice: Tenant) -> Iterator[tuple[tuple[str, int], str]]:
    """(the CP's address, the path prefix of Alice's public port)."""
    sid = alice.create(memory_mb=256)
    try:
        r = alice.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
        assert r.status_code == 200, r.text
        alice.sh(sid, START)
        host, port = platform.url.split("//")[1].split(":")
        yield (host, int(port)), f"/v1/sandboxes/{sid}/ports/{PORT}"
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _request(addr: tuple[str, int], path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n\r\n".encode()


def _unread(stack: ExitStack, source: str, addr: tuple[str, int], request: bytes) -> socket.socket:
    """A client that asks and reads nothing (a small receive window: the kernel holds little)."""
    s = stack.enter_context(socket.socket())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((source, 0))
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


def _settle(pid: int) -> None:
    """Until the CP's RSS stops moving (an earlier test's connections being torn down)."""
    p, last, deadline = psutil.Process(pid), -1, time.monotonic() + 30
    while time.monotonic() < deadline:
        now = p.memory_info().rss // MIB
        if abs(now - last) <= 1:
            return
        last = now
        time.sleep(1)


def test_unread_preview_responses_hold_a_bounded_share_of_the_cp(
    platform: Platform, served: tuple[tuple[str, int], str]
) -> None:
    addr, prefix = served
    request = _request(addr, f"{prefix}/{1 << 34}")  # 16 GiB: never all sent
    _settle(platform.cp.pid)
    with ExitStack() as stack, PeakRss(platform) as rss:
        held = [_unread(stack, ADDRESSES[i % len(ADDRESSES)], addr, request) for i in range(CONNS)]
        # Until the CP's growth stops for 5 s (the relays have all stalled), or passes the bound.
        peak, still_since, deadline = -1, time.monotonic(), time.monotonic() + 90
        while time.monotonic() - still_since < 5 and time.monotonic() < deadline:
            if rss.grown_mib[0] > BOUND_MIB:
                break
            if rss.grown_mib[0] > peak:
                peak, still_since = rss.grown_mib[0], time.monotonic()
            time.sleep(0.2)
        statuses = [_status(s) for s in held]  # every one was answered: none of them was a 429
    print(f"{CONNS} unread responses: CP +{rss.grown_mib[0]} MiB, agent +{rss.grown_mib[1]} MiB")  # with -s
    assert statuses == [200] * CONNS, sorted(set(statuses))
    assert rss.grown_mib[0] <= BOUND_MIB, (
        f"{CONNS} unread preview responses grew the CP by {rss.grown_mib[0]} MiB "
        f"(bound {BOUND_MIB} MiB: {PER_CONN_KIB} KiB a connection + {SLACK_MIB} MiB)"
    )


def test_a_slow_reader_gets_every_byte_in_order(served: tuple[tuple[str, int], str]) -> None:
    """Reads in small pieces, stops midway long enough for every buffer on the way to fill and
    the relay to pause, then reads the rest."""
    addr, prefix = served
    size = 24 * MIB
    expected = (bytes(range(256)) * (size // 256))[:size]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(60)
        s.connect(addr)
        s.sendall(_request(addr, f"{prefix}/{size}"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split()[1] == b"200" and f"content-length: {size}".encode() in head.lower(), head
        got = bytearray(body)
        paused = False
        while len(got) < size:
            if not paused and len(got) >= size // 2:
                time.sleep(3)
                paused = True
            chunk = s.recv(16384)
            assert chunk, f"cut at {len(got)} of {size} bytes"
            got += chunk
    assert len(got) == size
    first_bad = next((i for i in range(size) if got[i] != expected[i]), None) if got != expected else None
    assert first_bad is None, f"bytes differ from offset {first_bad}"
