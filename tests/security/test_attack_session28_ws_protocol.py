"""Session 28: uvicorn's WebSocket protocol under a client that does not play along.

Three ways a client made the control plane read or hold without bound what it sent, on any
WebSocket route (exec and terminal streams, watch, the dashboard's terminal, previews):

- **A closed WebSocket read the client's flood at line rate for 10 s.** Once the app closes a
  WebSocket (a stream's command ended, a terminal exited, a start refused), uvicorn sends its
  close and reads on until the client's close reply or its 10 s ``close_timeout``, discarding
  every message, back-pressure or not. A client that never replied had the CP read and parse
  ~20 GiB in those 10 s over one stream whose command exited (7.3 CPU-s), 18 GiB over eight;
  another team's reads went from 25 ms to 188 ms median meanwhile (the flooding client on the
  same two cores). Now 1 MiB past the close (``ws_guard.MAX_AFTER_CLOSE``) the connection is
  dropped.
- **Pings had the CP keep every pong.** uvicorn writes a ping's pong at once, its back-pressure
  holds only the app's own sends, and it reads on while the app waits for a message: a client
  sending pings and reading nothing grew the CP +65 MiB after 73-94 MiB of pings, unbounded.
  Now pings past the budget below close the connection, and the server stops reading a client
  whose writes are backed up (what pings within the budget would pile up over hours;
  tests/unit/cp/test_ws_guard.py lifts the budget to show that wall).
- **Frames that complete no message were read without bound.** A fragmented message is kept as a
  list of its frames until the last, and the size limit counts payload: empty continuation
  frames (6 bytes each) grew the CP +64 MiB after 36 MiB; unsolicited pongs were parsed, a Python
  call each, until uvicorn's keepalive gave up 40 s later (51 MiB, a CP core). Now such frames
  (pings, pongs, fragments under 1 KiB) have ``ws_pace``'s budget, 256 at once then 64 a second,
  past which the connection is closed 1008, and fragments are joined as they come.

Written as the attacker runs it: the public WebSocket routes with her team's key, a raw client
that sends masked frames as fast as the socket takes them and never reads.
"""

from __future__ import annotations

import json
import select
import socket
import time
from contextlib import closing

import pytest
from websockets.sync.client import connect

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import big_frame, watching
from tests.security.test_what_held_api import PeakRss, raw_websocket, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1024 * 1024
BINARY = big_frame(b"x" * (256 << 10), opcode=0x2)  # never a valid message, only read
PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # the largest a control frame may be
PONG = bytes([0x8A, 0x80]) + b"\0\0\0\0"  # an empty pong nobody asked for
OPEN = bytes([0x01, 0x80]) + b"\0\0\0\0"  # a text message begun, not finished (FIN clear), empty
EMPTY = bytes([0x00, 0x80]) + b"\0\0\0\0"  # an empty continuation frame, not the last
ONE_BYTE = bytes([0x00, 0x81]) + b"\0\0\0\0" + b"x"  # a 1-byte one: the size limit counts it
# A 2 KiB one, past the frame budget's size: only the message size limit (1 MiB) ends these, now
# that fragments are joined as they come.
BIG_PIECE = bytes([0x00, 0x80 | 126]) + (2048).to_bytes(2, "big") + b"\0\0\0\0" + b"x" * 2048
FLOOD_MAX = 256 * MIB  # before the fixes reached within 1-2 s, or RSS passed its bound first
FLOOD_S = 20  # the longest a flood runs (uvicorn's close timeout is 10 s)
STALL_S = 3  # a flood the socket takes nothing of for this long was held back
BOUND_MIB = 64  # RSS growth past this is buffering (the other WebSocket attacks' bound)
# What may get through before the server ends a flood: the kernels' socket buffers on loopback
# (autotuned: 2.9-3.3 MiB measured), the stream's own windows before its command ended (exec:
# up to 14 MiB measured), and the bounds (1 MiB past a close; the frame budget's few KiB).
SENT_BOUND = 48 * MIB
EXEC_STREAM = "exec/stream"


def flood(
    c: socket.socket, frames: bytes, rss: PeakRss | None = None, seconds: float = FLOOD_S
) -> tuple[int, bool]:
    """``frames`` over and over, never reading, until the server drops the connection or takes
    nothing for STALL_S (both: it ended the flood), FLOOD_MAX or ``seconds`` pass, or RSS passes
    its bound: the bytes sent and whether the server ended the flood."""
    c.setblocking(False)
    sent, pending, last = 0, b"", time.monotonic()
    deadline = last + seconds
    while (
        sent < FLOOD_MAX and time.monotonic() < deadline and (rss is None or max(rss.grown_mib) < BOUND_MIB)
    ):
        if time.monotonic() - last > STALL_S:
            return sent, True
        if not select.select([], [c], [], 0.2)[1]:
            continue
        data = pending or frames
        try:
            n = c.send(data)
        except OSError:  # reset or broken pipe: the server dropped it
            return sent, True
        pending, sent, last = data[n:], sent + n, time.monotonic()
    return sent, False


def _within(rss: PeakRss) -> bool:
    return max(rss.grown_mib) < BOUND_MIB


def _open(alice: Tenant, sandbox: str, route: str = EXEC_STREAM) -> socket.socket:
    return raw_websocket(alice.url, f"/v1/sandboxes/{sandbox}/{route}", {"X-API-Key": alice.api_key})


def _bounded(what: str, sent: int, ended: bool, rss: PeakRss | None = None) -> None:
    grown = rss.grown_mib if rss is not None else []
    print(
        f"{what}: {sent / MIB:.1f} MiB sent, ended by the server: {ended}, RSS growth {grown} MiB (CP, agent)"
    )
    assert ended and sent < SENT_BOUND and max(grown, default=0) < BOUND_MIB, (
        f"{what}: {sent // MIB} MiB sent (ended: {ended}), RSS growth {grown} MiB"
    )


# --- after the app's close ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "start"),
    [
        (EXEC_STREAM, {"type": "start", "cmd": "true"}),
        ("pty", {"type": "start", "cmd": "true", "cols": 80, "rows": 24}),
        (EXEC_STREAM, {"type": "start"}),  # refused: an error frame, then the close
    ],
    ids=["exec-stream-ended", "terminal-ended", "start-refused"],
)
def test_a_closed_websocket_does_not_read_the_clients_flood(
    alice: Tenant, sandbox: str, route: str, start: dict[str, object]
) -> None:
    """The stream ends at once; the client floods on and never reads the end or the close."""
    with closing(_open(alice, sandbox, route)) as c:
        c.sendall(text_frame(json.dumps(start)))
        sent, ended = flood(c, BINARY)
    _bounded(f"{route} {start}", sent, ended)


def test_a_client_that_answers_the_close_still_closes_cleanly(alice: Tenant, sandbox: str) -> None:
    """The bound takes nothing from a client that reads: the exit frame, then the server's close
    (code 1000), and its own close reply completes the handshake."""
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/{EXEC_STREAM}"
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


# --- pings from a client that reads nothing ----------------------------------------------------

SINK = {"type": "start", "cmd": "/bin/sh", "args": ["-c", "cat > /dev/null"]}


@pytest.mark.parametrize(
    ("start", "frames"),
    [
        (None, PING * 512),
        ({"type": "start", "cmd": "/bin/sleep", "args": ["600"]}, PING * 512),
        # Stdin the command takes between the pings: each message the app takes has uvicorn
        # read the socket again.
        (SINK, text_frame(json.dumps({"type": "stdin", "data": "x" * 1000})) + PING * 512),
    ],
    ids=["before-start", "running", "stdin-between"],
)
def test_pings_from_a_client_that_reads_nothing_are_held_back(
    platform: Platform, alice: Tenant, sandbox: str, start: dict[str, object] | None, frames: bytes
) -> None:
    with watching(platform) as rss, closing(_open(alice, sandbox)) as c:
        if start is not None:
            c.sendall(text_frame(json.dumps(start)))
        sent, ended = flood(c, frames, rss)
    if start is not None:
        alice.sh(sandbox, "pkill -9 sleep; pkill -9 cat; true")
    _bounded("pings", sent, ended, rss)


def test_a_client_that_reads_gets_every_pong(alice: Tenant, sandbox: str) -> None:
    """Neither wall takes anything from a client that reads: 200 pings at once (within the
    budget of frames that complete no message), each answered."""
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/{EXEC_STREAM}"
    with connect(url, additional_headers={"X-API-Key": alice.api_key}, open_timeout=30) as ws:
        for i in range(200):
            ws.ping(f"{i}".encode()).wait(30)


# --- frames that complete no message -----------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "piece"),
    [(OPEN, EMPTY), (OPEN, ONE_BYTE), (OPEN, BIG_PIECE), (b"", PONG)],
    # one-byte and big fragments: bounded by the message size before the fix too
    ids=["empty-fragments", "one-byte-fragments", "big-fragments", "pongs"],
)
def test_frames_that_complete_no_message_are_bounded(
    platform: Platform, alice: Tenant, sandbox: str, first: bytes, piece: bytes
) -> None:
    with watching(platform) as rss, closing(_open(alice, sandbox)) as c:
        c.sendall(first)
        sent, ended = flood(c, piece * 10000, rss)
    _bounded("frames", sent, ended, rss)
