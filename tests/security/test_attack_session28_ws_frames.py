"""Session 28: frames that complete no message, from a client, were read without bound.

uvicorn's WebSocket protocol reads the socket on while no message is whole for the app to take,
and nothing bounded the frames that complete none:

- **Empty fragments grew the CP's memory.** A fragmented message is kept as a list of its
  frames' payloads until its last, and the message size limit (``WARREN_WS_MAX_MESSAGE``) counts
  payload bytes: an empty continuation frame (6 bytes on the wire from a client) adds none of
  those but one more entry to the list. A client that opened a text message and sent empty
  continuations had the CP grow with what it sent (+64 MiB after 36 MiB).
- **Unsolicited pongs were read and dropped**, 6 bytes and a Python call each, until uvicorn's
  keepalive gave up on the client 40 s later: a CP core spent on one connection (51 MiB of pongs).

Now such frames (pings, pongs, fragments under 1 KiB) have ``ws_pace``'s budget, 256 at once then
64 a second, past which the connection is closed 1008 (as session 22 did for a sandbox's frames
towards the CP's preview proxy), and fragments are joined as they come. One-byte fragments were
already bounded by the message size (their variant, kept).

Written as the attacker runs it: the public WebSocket routes with her team's key, a raw client
that sends masked frames as fast as the socket takes them and never reads.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import watching
from tests.security.test_what_held_api import PeakRss, raw_websocket

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1024 * 1024
OPEN = bytes([0x01, 0x80]) + b"\0\0\0\0"  # a text message begun, not finished (FIN clear), empty
EMPTY = bytes([0x00, 0x80]) + b"\0\0\0\0"  # an empty continuation frame, not the last
ONE_BYTE = bytes([0x00, 0x81]) + b"\0\0\0\0" + b"x"  # a 1-byte one: the size limit counts it
PONG = bytes([0x8A, 0x80]) + b"\0\0\0\0"  # an empty pong nobody asked for
FLOOD_MAX = 256 * MIB
# What may get through before the server ends the flood: the budget is a few KiB of frames, the
# rest the kernels' socket buffers on loopback (2.9-3.3 MiB measured). Before the fix, pongs
# went on until uvicorn's keepalive gave up on the client (20 s + 20 s: 51 MiB, a CP core busy).
SENT_BOUND = 16 * MIB
BOUND_MIB = 64  # RSS growth past this is buffering (the other WebSocket attacks' bound)
STALL_S = 3


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
    assert r.status_code == 201, r.text
    sb = str(r.json()["id"])
    yield sb
    alice.w("DELETE", f"/v1/sandboxes/{sb}")


def flood(c: socket.socket, rss: PeakRss, frames: bytes) -> tuple[int, bool]:
    """``frames`` over and over, never reading, until the server drops the connection or takes
    nothing for STALL_S, FLOOD_MAX is sent or RSS passes the bound: the bytes sent and whether
    the server ended the flood."""
    c.setblocking(False)
    sent, pending, last = 0, b"", time.monotonic()
    while sent < FLOOD_MAX and max(rss.grown_mib) < BOUND_MIB:
        if time.monotonic() - last > STALL_S:
            return sent, True
        if not select.select([], [c], [], 0.2)[1]:
            continue
        data = pending or frames
        try:
            n = c.send(data)
        except OSError:
            return sent, True
        pending, sent, last = data[n:], sent + n, time.monotonic()
    return sent, False


@pytest.mark.parametrize(
    ("first", "piece"),
    [(OPEN, EMPTY), (OPEN, ONE_BYTE), (b"", PONG)],
    ids=["empty-fragments", "one-byte-fragments", "pongs"],
)
def test_frames_that_complete_no_message_are_bounded(
    platform: Platform, alice: Tenant, sandbox: str, first: bytes, piece: bytes
) -> None:
    path = f"/v1/sandboxes/{sandbox}/exec/stream"
    with (
        watching(platform) as rss,
        closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c,
    ):
        c.sendall(first)
        sent, ended = flood(c, rss, piece * 10000)
    print(
        f"{sent / MIB:.1f} MiB of fragments sent, ended: {ended}, RSS growth {rss.grown_mib} MiB (CP, agent)"
    )
    assert ended and sent < SENT_BOUND and max(rss.grown_mib) < BOUND_MIB, (
        f"{sent // MIB} MiB of frames sent (ended: {ended}): RSS grew {rss.grown_mib}"
    )
