"""Session 28: a client's pings made the control plane buffer its pongs without bound.

uvicorn's WebSocket protocol answers each ping by writing its pong to the socket at once, whether
or not the client reads: its back-pressure (``pause_writing``) only holds the app's own sends
back, and the socket is read on while the app waits for a message. A client that sends pings
(125 bytes of payload each, as the RFC allows) and reads nothing had every pong kept in the
CP's write buffer: its memory grew with what the client sent.

Written as the attacker runs it: the public WebSocket routes with her team's key, a raw client
that sends masked pings as fast as the socket takes them and never reads. Now two walls stop it
(``ws_guard``): pings past the budget of frames that complete no message close the connection
1008 (the one this flood meets first), and the server stops reading a client whose writes are
backed up, as TCP holds back any sender (what pings within the budget would still pile up, over
hours; tests/unit/cp/test_ws_guard.py lifts the budget to show it).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import watching
from tests.security.test_what_held_api import PeakRss, raw_websocket, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1024 * 1024
PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # the largest a control frame may be
PINGS = PING * 512  # ~66 KiB a send
FLOOD_MAX = 256 * MIB  # before the fix its pongs alone passed the bound within ~70 MiB
BOUND_MIB = 64  # RSS growth past this is buffering (the other WebSocket attacks' bound)
STALL_S = 3  # the flood is held back once the socket takes nothing for this long


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
    assert r.status_code == 201, r.text
    sb = str(r.json()["id"])
    yield sb
    alice.w("DELETE", f"/v1/sandboxes/{sb}")


def ping_flood(c: socket.socket, rss: PeakRss, frames: bytes) -> tuple[int, bool]:
    """``frames`` (pings) over and over, never reading, until the socket takes nothing for
    STALL_S, FLOOD_MAX is sent or RSS passes the bound: the bytes sent and whether the server
    held the flood back."""
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
        except OSError:  # dropped: held back too
            return sent, True
        pending, sent, last = data[n:], sent + n, time.monotonic()
    return sent, False


SINK = {"type": "start", "cmd": "/bin/sh", "args": ["-c", "cat > /dev/null"]}


@pytest.mark.parametrize(
    ("start", "frames"),
    [
        (None, PINGS),
        ({"type": "start", "cmd": "/bin/sleep", "args": ["600"]}, PINGS),
        # Stdin the command takes between the pings: each message the app takes has the server
        # read the socket again (uvicorn resumes it for the app).
        (SINK, text_frame(json.dumps({"type": "stdin", "data": "x" * 1000})) + PINGS),
    ],
    ids=["before-start", "running", "stdin-between"],
)
def test_pings_from_a_client_that_reads_nothing_are_held_back(
    platform: Platform, alice: Tenant, sandbox: str, start: dict[str, object] | None, frames: bytes
) -> None:
    """An exec stream waiting for its start frame, one whose command runs, and one whose
    command reads its stdin."""
    path = f"/v1/sandboxes/{sandbox}/exec/stream"
    with (
        watching(platform) as rss,
        closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c,
    ):
        if start is not None:
            c.sendall(text_frame(json.dumps(start)))
        sent, held = ping_flood(c, rss, frames)
    print(f"{sent / MIB:.1f} MiB sent, held back: {held}, RSS growth {rss.grown_mib} MiB (CP, agent)")
    assert held and max(rss.grown_mib) < BOUND_MIB, (
        f"{sent // MIB} MiB of pings: RSS grew {rss.grown_mib} MiB"
    )
    if start is not None:
        alice.sh(sandbox, "pkill -9 sleep; pkill -9 cat; true")


def test_a_client_that_reads_gets_every_pong(alice: Tenant, sandbox: str) -> None:
    """The hold takes nothing from a client that reads: 200 pings at once (within the budget of
    frames that complete no message), each answered."""
    from websockets.sync.client import connect

    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/exec/stream"
    with connect(url, additional_headers={"X-API-Key": alice.api_key}, open_timeout=30) as ws:
        for i in range(200):
            ws.ping(f"{i}".encode()).wait(30)
