"""Session 22: a sandbox's server against the preview proxy's loop, with a client that reads
nothing.

The proxy parses what the sandbox's server sends on the CP's event loop (h11 for HTTP,
``websockets``' protocol for WebSockets). Some of it reaches no client, so no client's reading
paces it, and each piece is a parsed event of a few bytes:

- **HTTP informational responses.** Before its final response a server may send any number of
  1xx (``100 Continue``, 25 bytes each); the proxy read them until the final one came. Measured:
  ~8.6 us of CPU an event, so ~3 MB/s of them keeps a CP core busy, for as long as the
  client waits (for ever: nothing ends the wait while the client stays).
- **WebSocket pings.** Each empty ping (2 bytes from a server) is parsed and answered on the
  loop: ~4.4 us, ~0.5 MB/s saturates a core; pongs and empty fragments ~2.5 us.
- **Response heads of many headers.** h11 parses a head's headers one by one: a 64 KiB head of
  10 700 one-letter headers cost the CP ~25 ms a response in one stretch of its loop, and a
  client asking again as soon as each head was in kept it at 42 % of a core (167 in 10 s).
- **A message of tiny fragments.** A message's fragments were kept as a list of pieces until
  its last: 1-2 byte fragments held ~20x their bytes (a list slot and a bytes object each),
  ~22 MiB a connection before the 1 MiB message bound, charged to no one (a team holds 256
  preview connections).

As the attacker runs it: her own sandbox's public port answers ``/info`` with endless
``100 Continue``, ``/ping`` with a WebSocket that sends empty pings without end (and reads the
pongs), ``/frag`` with one endless message of 2-byte fragments; her client asks and waits.

Fixed (cp/proxy/http.py, cp/proxy/ws.py): 16 informational responses at once, then one a
second, else 502; frames that complete no message and carry < 1 KiB, 256 at once then 64 a
second, else both sides are closed with 1008; a message's fragments are joined as they come;
a head's headers past 64 count as parsed events in the connection's and the account's paces
(pace.py): 6 such responses in 10 s, 0.3 s of CP CPU.
Measured before, one connection each: the request had no answer in 60 s while the CP spent
60.1 s of CPU on it; the ping flood took 36.5 s of CP CPU before it ended (1011); 8 fragment
floods ended with 1009 after holding +68 MiB of the CP. After: 502 at once (0.0 s of CPU),
1008 (0.1 s), 1008 with +0 MiB.
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
from tests.security.test_attack_session15_preview_unread import start_server
from tests.security.test_attack_session22_preview_chunks import SERVER_HEAD
from tests.security.test_what_held_api import PeakRss, open_handshake

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1 << 20
PORT = 8000
WAIT_S = 60  # a generous deadline for the proxy to give up on the server (seconds after the fix)
FRAG_CONNS = 8
HEADS_WINDOW_S = 10.0
# At most the account's pace of headers past the free 64 (pace.py: 16384 at once, then 16384 a
# second) over 10 636 a response, with a margin: ~17; before the fix ~250 (the CP at a core).
HEADS_BOUND = 30
FRAG_BOUND_MIB = 24  # 8 connections; before the fix +68 MiB for the 8

SERVER = (
    SERVER_HEAD
    + r"""
def drain(c):
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass
def serve(c):
    try:
        f, path, key = read_head(c)
        if path.endswith(b"/heads"):
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"a: b\r\n" * 10700 + b"\r\n"
            c.sendall(head)
            while f.readline():
                while f.readline() not in (b"\r\n", b""):
                    pass
                c.sendall(head)
            return
        if path.endswith(b"/info"):
            chunk = b"HTTP/1.1 100 Continue\r\n\r\n" * 2000
            while True:
                c.sendall(chunk)
        upgrade(c, key)
        threading.Thread(target=drain, args=(c,), daemon=True).start()
        if path.endswith(b"/ping"):
            chunk = b"\x89\x00" * 16384
        else:
            c.sendall(b"\x01\x02ab")
            chunk = b"\x00\x02ab" * 8192
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
def prefix(alice: Tenant) -> Iterator[str]:
    """The path of Alice's public port."""
    sid = alice.create(memory_mb=256)
    try:
        r = alice.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
        assert r.status_code == 200, r.text
        alice.sh(sid, START)
        yield f"/v1/sandboxes/{sid}/ports/{PORT}"
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _cpu_s(platform: Platform) -> float:
    t = psutil.Process(platform.cp.pid).cpu_times()
    return float(t.user + t.system)


def _status(s: socket.socket) -> int:
    """The final response's status (0: none came within WAIT_S, or the connection closed)."""
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return 0
            head += chunk
    except TimeoutError:
        return 0
    return int(head.split()[1])


def _close_code(s: socket.socket) -> int:
    """The code of the first close frame the CP sends (0: none within WAIT_S)."""
    buf = b""
    try:
        while True:
            while len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F):
                chunk = s.recv(65536)
                if not chunk:
                    return 0
                buf += chunk
            n = buf[1] & 0x7F
            assert n < 126, "no data message was sent: only small frames are expected"
            op, payload, buf = buf[0] & 0x0F, buf[2 : 2 + n], buf[2 + n :]
            if op == 0x8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    except TimeoutError:
        return 0


def test_endless_informational_responses_end_in_a_502(platform: Platform, prefix: str) -> None:
    host, port = platform.url.removeprefix("http://").rsplit(":", 1)
    cpu = _cpu_s(platform)
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as s:
        s.sendall(f"GET {prefix}/info HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        status = _status(s)
    print(f"informational flood: status {status}, CP CPU {_cpu_s(platform) - cpu:.1f} s")  # with -s
    assert status == 502


def test_a_flood_of_pings_closes_the_websocket(platform: Platform, prefix: str) -> None:
    cpu = _cpu_s(platform)
    s, answer = open_handshake(platform.url, f"{prefix}/ping", {})
    with s:
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        s.settimeout(WAIT_S)
        code = _close_code(s)
    print(f"ping flood: close {code}, CP CPU {_cpu_s(platform) - cpu:.1f} s")
    assert code == 1008


def test_a_message_of_tiny_fragments_holds_nothing_and_is_closed(platform: Platform, prefix: str) -> None:
    with ExitStack() as stack, PeakRss(platform) as rss:
        socks = []
        for _ in range(FRAG_CONNS):
            s, answer = open_handshake(platform.url, f"{prefix}/frag", {})
            stack.enter_context(s)
            assert answer.startswith(b"HTTP/1.1 101 "), answer
            s.settimeout(WAIT_S)
            socks.append(s)
        codes = [_close_code(s) for s in socks]
        time.sleep(1)
    print(f"{FRAG_CONNS} fragment floods: closes {codes}, CP +{rss.grown_mib[0]} MiB")
    assert codes == [1008] * FRAG_CONNS
    assert rss.grown_mib[0] <= FRAG_BOUND_MIB


def test_responses_of_many_headers_are_paced(platform: Platform, prefix: str) -> None:
    """Every response a 64 KiB head of 10 700 one-letter headers, asked for again as soon as its
    head is in, for ``HEADS_WINDOW_S``: each cost the CP ~40 ms in one stretch of its loop."""
    host, port = platform.url.removeprefix("http://").rsplit(":", 1)
    request = f"GET {prefix}/heads HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    cpu, answered = _cpu_s(platform), 0
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as s:
        end, buf = time.monotonic() + HEADS_WINDOW_S, b""
        while time.monotonic() < end:
            s.sendall(request)
            while (at := buf.find(b"\r\n\r\n")) < 0:
                chunk = s.recv(1 << 20)
                assert chunk, "the CP closed the connection"
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 200 "), buf[:80]
            buf, answered = buf[at + 4 :], answered + 1
    spent = _cpu_s(platform) - cpu
    print(f"responses of 10 700 headers: {answered} in {HEADS_WINDOW_S:.0f} s, CP CPU {spent:.1f} s")
    assert 0 < answered <= HEADS_BOUND
