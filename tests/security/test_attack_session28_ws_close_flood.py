"""Session 28: a WebSocket the server had closed read the client's flood for 10 s, at line rate.

Once the app closes a WebSocket (a stream's command ended, a terminal exited, a start refused),
uvicorn's protocol sends the close frame and keeps reading until the client's close reply, for up
to 10 s (its ``close_timeout``), discarding every message meanwhile: it reads the socket again
even where it had paused for back-pressure. A client that never replies and sends as fast as it
can had the CP read and parse all of it: 19.8-21.7 GiB in those 10 s over one stream whose
command exited (7.3 CPU-s of the CP), 18 GiB over eight; another team's reads slowed from 25 ms
to 188 ms median meanwhile (the flooding client on the same two cores). Nothing bounded it per
connection, team or address, and each closed stream gave the attacker another 10 s.

Written as the attacker runs it: the public WebSocket routes with her team's key, a raw client
that sends masked frames as fast as the socket takes them and never reads. Now past
``ws_guard.MAX_AFTER_CLOSE`` (1 MiB) after the app's close, the server drops the connection:
what the client gets into the server is that plus what the kernels' socket buffers hold.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import big_frame
from tests.security.test_what_held_api import raw_websocket, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1024 * 1024
FRAME = big_frame(b"x" * (256 << 10), opcode=0x2)  # binary: never a valid message, only read
# What the flood stops at: past the kernels' buffers (loopback: a few MiB each way) and the
# server's bound many times over. Before the fix it was reached within a second or two.
FLOOD_MAX = 512 * MIB
FLOOD_S = 20  # the longest the client keeps trying (the server's close_timeout is 10 s)
# What may get through: the bound after the close, the kernels' send and receive buffers on
# loopback (autotuned, up to 4 and 6 MiB), and what the stream took before its command ended.
SENT_BOUND = 48 * MIB


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
    assert r.status_code == 201, r.text
    sb = str(r.json()["id"])
    yield sb
    alice.w("DELETE", f"/v1/sandboxes/{sb}")


def flood_until_dropped(c: socket.socket) -> tuple[int, bool]:
    """Send FRAME over and over, never reading, until the server drops the connection, the
    flood reaches FLOOD_MAX, or FLOOD_S pass: the bytes sent and whether it was dropped."""
    c.setblocking(False)
    sent, pending, deadline = 0, b"", time.monotonic() + FLOOD_S
    while sent < FLOOD_MAX and time.monotonic() < deadline:
        if not select.select([], [c], [], 0.2)[1]:
            continue
        data = pending or FRAME
        try:
            n = c.send(data)
        except OSError:  # reset or broken pipe: the server dropped it
            return sent, True
        pending, sent = data[n:], sent + n
    return sent, False


@pytest.mark.parametrize(
    ("route", "start"),
    [
        ("exec/stream", {"type": "start", "cmd": "true"}),
        ("pty", {"type": "start", "cmd": "true", "cols": 80, "rows": 24}),
    ],
    ids=["exec-stream", "terminal"],
)
def test_a_stream_that_ended_does_not_read_the_clients_flood(
    alice: Tenant, sandbox: str, route: str, start: dict[str, object]
) -> None:
    """The stream's command exits at once; the client floods on and never reads the exit or
    the close."""
    path = f"/v1/sandboxes/{sandbox}/{route}"
    with closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c:
        c.sendall(text_frame(json.dumps(start)))
        sent, dropped = flood_until_dropped(c)
    print(f"{sent / MIB:.1f} MiB sent, dropped: {dropped}")
    assert sent < SENT_BOUND and dropped, (
        f"{route}: {sent // MIB} MiB sent after it ended (dropped: {dropped})"
    )


def test_a_stream_refused_at_its_start_does_not_read_the_clients_flood(alice: Tenant, sandbox: str) -> None:
    """A start frame the server refuses (no command): an error frame, then its close."""
    path = f"/v1/sandboxes/{sandbox}/exec/stream"
    with closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c:
        c.sendall(text_frame(json.dumps({"type": "start"})))
        sent, dropped = flood_until_dropped(c)
    print(f"{sent / MIB:.1f} MiB sent, dropped: {dropped}")
    assert sent < SENT_BOUND and dropped, f"{sent // MIB} MiB sent after the refusal (dropped: {dropped})"


def test_a_client_that_answers_the_close_still_closes_cleanly(alice: Tenant, sandbox: str) -> None:
    """The bound takes nothing from a client that reads: the exit frame, then the server's close
    (code 1000), and its own close reply completes the handshake."""
    from websockets.sync.client import connect

    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/exec/stream"
    with connect(url, additional_headers={"X-API-Key": alice.api_key}, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "cmd": "true"}))
        frames = []
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=30)))
        except Exception as e:  # the server's close
            closed = e
    assert [f["type"] for f in frames][-1] == "exit" and frames[-1]["exit_code"] == 0, frames
    assert getattr(closed, "rcvd", None) is not None and closed.rcvd.code == 1000, repr(closed)
