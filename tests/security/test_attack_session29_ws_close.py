"""Session 29: WebSockets the control plane closes while their client reads nothing.

Once the CP has closed a WebSocket (a stream's command ended, the frame budget's 1008, uvicorn's
1011 when its keepalive ping goes unanswered) uvicorn calls ``transport.close()``, which waits for
the transport's buffered frames to drain. A client that reads nothing once the kernels' buffers
are full never lets them drain: the connection (its fd, protocol, buffered frames up to the
transport's 64 KiB high-water mark, its count under the client's address) stayed until the client
went. An attacker holding such connections kept them without sending a byte more, up to the
per-address cap (512) from one address, the process cap (4096) from several. Now
``ws_guard`` aborts a connection still open ``close_timeout`` (10 s) after the server's close.

Written as the attacker runs it: the public exec stream with her team's key, raw sockets with
small receive buffers that never read after the handshake and stay open.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import time
from contextlib import ExitStack, closing

import psutil
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_what_held_api import text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # the largest a control frame may be
FLOOD_S = 20  # the longest a flood runs
STALL_S = 3  # a socket that takes nothing for this long: the server stopped reading it
# How long the attacker holds her connections open after the server's closes: well past
# uvicorn's close timeout (10 s). (A stream whose command ended behind its unread output is
# closed 1011 by uvicorn's keepalive ~40 s in, then let go the same way: the unit test
# tests/unit/cp/test_ws_guard.py covers that close with its timings cut, not this module.)
HOLD_S = 60
EXEC_STREAM = "exec/stream"
CLIENTS = 16
# More than the kernels' buffers on loopback (autotuned up to 4 MiB a socket) and the CP
# transport's high-water mark take: its sends then wait for the client.
OUTPUT = "head -c 8000000 /dev/zero | tr '\\0' x"


def _held(platform: Platform, clients: list[socket.socket]) -> int:
    """The CP's TCP connections to these clients (any state but closed)."""
    ports = {c.getsockname()[1] for c in clients}
    return sum(
        1
        for k in psutil.Process(platform.cp.pid).net_connections(kind="tcp")
        if k.raddr and k.raddr.port in ports and k.status != psutil.CONN_CLOSE
    )


def _flood(clients: list[socket.socket], frames: bytes) -> int:
    """``frames`` on every client, as fast as each socket takes them, until each has taken
    nothing for STALL_S (the server stopped reading it) or reset, or FLOOD_S pass: bytes sent."""
    for c in clients:
        c.setblocking(False)
    last = dict.fromkeys(clients, time.monotonic())
    sent, deadline = 0, time.monotonic() + FLOOD_S
    while last and time.monotonic() < deadline:
        for c in [c for c, t in last.items() if time.monotonic() - t > STALL_S]:
            del last[c]
        for c in select.select([], list(last), [], 0.2)[1]:
            try:
                sent += c.send(frames)
            except OSError:  # reset: the server dropped it
                del last[c]
                continue
            last[c] = time.monotonic()
    return sent


def _unread_drops(platform: Platform) -> list[int]:
    """The unsent bytes of each connection the CP's log says it dropped with its close unread."""
    log = platform.cp.log_path.read_text(errors="replace")
    return [int(n) for n in re.findall(r"why=close_unread unsent=(\d+)", log)]


def _held_after(platform: Platform, clients: list[socket.socket], what: str, sent: int) -> None:
    """Holds the connections open, reading nothing, until the CP has none of them or HOLD_S
    pass; none may be left."""
    start, drops = time.monotonic(), len(_unread_drops(platform))
    before = held = _held(platform, clients)
    while held and time.monotonic() - start < HOLD_S:
        time.sleep(1)
        held = _held(platform, clients)
    unsent = _unread_drops(platform)[drops:]
    print(
        f"{what}: {len(clients)} connections, {sent} bytes sent; the CP held {before} after the flood, "
        f"{held} after {time.monotonic() - start:.0f} s; dropped with their close unread: {len(unsent)} "
        f"({sum(unsent)} bytes unsent)"
    )
    assert held == 0, f"{what}: the CP holds {held} of {len(clients)} closed connections {HOLD_S} s on"


def _websocket(alice: Tenant, path: str) -> socket.socket:
    """A raw WebSocket with the smallest receive buffer the kernel allows: nothing past the
    handshake is ever read."""
    host, port = alice.url.removeprefix("http://").rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.settimeout(30)
    s.connect((host, int(port)))
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
        f"X-API-Key: {alice.api_key}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def _open(stack: ExitStack, alice: Tenant, sandbox: str, n: int) -> list[socket.socket]:
    path = f"/v1/sandboxes/{sandbox}/{EXEC_STREAM}"
    return [stack.enter_context(closing(_websocket(alice, path))) for _ in range(n)]


def _start(clients: list[socket.socket], script: str) -> None:
    start = {"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}
    for c in clients:
        c.sendall(text_frame(json.dumps(start)))


def test_streams_closed_1008_behind_their_unread_output_are_let_go(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    """Commands that write more than the kernels and the CP's transport take, then pings past
    the frame budget: each stream closed 1008, the close behind the unread output."""
    with ExitStack() as stack:
        clients = _open(stack, alice, sandbox, CLIENTS)
        _start(clients, f"{OUTPUT}; sleep 600")
        time.sleep(5)  # the output backs up
        sent = _flood(clients, PING * 512)
        _held_after(platform, clients, "1008 behind output", sent)
    alice.sh(sandbox, "pkill -9 sleep; true")
