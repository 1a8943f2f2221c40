"""Attack: hold hundreds of MiB of the control plane's (and the agent's) memory through many
streams at once. Every message is under the WebSocket limit (WARREN_WS_MAX_MESSAGE, see
test_attack_websocket_memory.py), so each is accepted; what is bounded here is how much one
stream may hold queued (bytes, not messages: then the CP stops reading its WebSocket) and how
many streams one team may hold open in a CP process (WARREN_MAX_STREAMS_PER_TEAM: exec streams,
terminals and watches together; the next one is refused with 429 ``too_many_streams``).

One tenant opens more streams than the cap, at commands that never read stdin (exec streams and
terminals), and sends messages just under the limit on all of them until nothing takes more.
The CP's and the agent's RSS growth must stay bounded; another team's stream and requests keep
working meanwhile, and the tenant's slots come back once its streams close.

The module's platform runs with a cap of CAP streams, so that the memory a tenant at its cap can
hold is judged against the same 64 MiB bound as the other memory attacks: each open stream may
still hold a few MiB (the WebSocket message read ahead, the one being handed on, its queued stdin,
and what gRPC's flow-control window lets the agent buffer, see docs/security.md), so what a team
can hold is the cap times that. The flood stops at the first sign of buffering (RSS growth
>= 64 MiB), so a failure costs the shared machine little."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import (
    BOUND_MIB,
    MIB,
    big_frame,
    stdin_message,
    watching,
)
from tests.security.test_what_held_api import PeakRss, open_handshake, text_frame

pytestmark = pytest.mark.root

# WARREN_MAX_STREAMS_PER_TEAM on this module's CP (the default is 64): few enough that a tenant
# at its cap stays under the bound, each stream holding what gRPC's flow-control window lets the
# agent buffer (~4-9 MiB measured; docs/security.md).
CAP = 4
ATTEMPTS = CAP + 24  # more than the cap: the rest must be refused
MESSAGE = MIB - 4096  # just under the CP's default WebSocket message limit (1 MiB)
PTY_INPUT = 64 << 10  # a terminal's largest input frame
SLEEP = {"cmd": "/bin/sleep", "args": ["600"]}
# A terminal that never reads: raw mode, so the line discipline holds its input back (a cooked
# one discards what does not fit a line, and a ^C in the input would end the command).
RAW_SLEEP = {"cmd": "/bin/sh", "args": ["-c", "stty raw -echo; exec sleep 600"]}
KILL_SLEEPS = (
    'for d in /proc/[0-9]*; do [ "$(cat $d/comm)" = sleep ] && kill -9 ${d#/proc/}; done 2>/dev/null; true'
)
FLOOD_S = 60  # the longest a flood runs, however the streams take it


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    async with running_platform(db_url, platform_dir, {"WARREN_MAX_STREAMS_PER_TEAM": str(CAP)}) as p:
        yield p


def try_websocket(url: str, path: str, headers: dict[str, str]) -> socket.socket | tuple[int, dict]:
    """A raw WebSocket that never reads after the handshake (as ``raw_websocket``), or the HTTP
    status and JSON body of a refused handshake."""
    s, answer = open_handshake(url, path, headers)
    if answer.startswith(b"HTTP/1.1 101 "):
        return s
    with closing(s):
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length"))
        while len(body) < length:
            body += s.recv(length - len(body))
    return int(head.split()[1]), json.loads(body)


def flood(frames: dict[socket.socket, bytes], rss: PeakRss) -> int:
    """Send each connection's frame over and over until none takes more for 3 s, the server
    closed them all, or RSS grew past the bound (a stream that takes everything for a minute is
    a failure: its command does not read). Returns the bytes sent."""
    pending = dict.fromkeys(frames, b"")
    for c in frames:
        c.setblocking(False)
    sent, last_progress = 0, time.monotonic()
    deadline = last_progress + FLOOD_S
    while pending and time.monotonic() - last_progress < 3 and max(rss.grown_mib) < BOUND_MIB:
        assert time.monotonic() < deadline, f"the streams took {sent // MIB} MiB in {FLOOD_S} s and more"
        for c in select.select([], list(pending), [], 0.2)[1]:
            data = pending[c] or frames[c]  # a frame is finished before the next one starts
            try:
                n = c.send(data)
            except OSError:
                del pending[c]
                continue
            pending[c], sent, last_progress = data[n:], sent + n, time.monotonic()
    return sent


@pytest.fixture(scope="module")
def sandboxes(alice: Tenant, bob: Tenant) -> Iterator[tuple[str, str]]:
    ids = []
    for t in (alice, bob):
        r = t.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 256})
        assert r.status_code == 201, r.text
        ids.append(str(r.json()["id"]))
    yield ids[0], ids[1]
    alice.w("DELETE", f"/v1/sandboxes/{ids[0]}")
    bob.w("DELETE", f"/v1/sandboxes/{ids[1]}")


Refusals = list[tuple[int, dict]]


def _open_many(stack: ExitStack, t: Tenant, sb: str) -> tuple[dict[socket.socket, bytes], Refusals]:
    """ATTEMPTS streams, every sixth a terminal: the open ones with the frame to flood each
    with, and the refusals."""
    frames: dict[socket.socket, bytes] = {}
    refused = []
    exec_flood, pty_flood = stdin_message(MESSAGE), big_frame(b"x" * PTY_INPUT, opcode=0x2)
    for i in range(ATTEMPTS):
        pty = i % 6 == 5
        path = f"/v1/sandboxes/{sb}/{'pty' if pty else 'exec/stream'}"
        got = try_websocket(t.url, path, {"X-API-Key": t.api_key})
        if isinstance(got, tuple):
            refused.append(got)
            continue
        stack.enter_context(closing(got))
        start = RAW_SLEEP | {"type": "start", "cols": 80, "rows": 24} if pty else SLEEP | {"type": "start"}
        got.sendall(text_frame(json.dumps(start)))
        frames[got] = pty_flood if pty else exec_flood
    return frames, refused


def _echo_stream(t: Tenant, sb: str) -> None:
    """An exec stream of ``cat`` echoes what it is sent."""
    url = t.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sb}/exec/stream"
    with ws_connect(url, additional_headers={"X-API-Key": t.api_key}, open_timeout=30) as c:
        c.send(json.dumps({"type": "start", "cmd": "cat", "args": [], "close_stdin": False}))
        assert json.loads(c.recv(timeout=30))["type"] == "start"
        c.send(json.dumps({"type": "stdin", "data": "still here\n"}))
        assert json.loads(c.recv(timeout=30)) == {"type": "stdout", "data": "still here\n"}


def test_many_streams_of_large_stdin_at_commands_that_do_not_read(
    platform: Platform, alice: Tenant, bob: Tenant, sandboxes: tuple[str, str]
) -> None:
    mine, theirs = sandboxes
    with ExitStack() as stack, watching(platform) as rss:
        frames, refused = _open_many(stack, alice, mine)
        sent = flood(frames, rss)
        print(f"{len(frames)} streams open, {len(refused)} refused")
        print(f"{len(frames)} streams: {sent // MIB} MiB sent, RSS growth {rss.grown_mib} MiB (CP, agent)")
        assert max(rss.grown_mib) < BOUND_MIB, f"{len(frames)} streams: CP, agent grew {rss.grown_mib} MiB"
        assert len(frames) <= CAP
        assert refused and all(
            status == 429 and body["error"]["code"] == "too_many_streams" for status, body in refused
        ), refused[:3]
        # Another team is not held back by this one's streams.
        _echo_stream(bob, theirs)
        r = bob.x(theirs, "echo ok")
        assert r.status_code == 200 and r.json()["stdout"] == "ok\n", r.text
    # Streams give their slots back when they end. A stream whose stdin is held back does not
    # read its WebSocket, so its client's close is seen only once its command ends: end them.
    alice.sh(mine, KILL_SLEEPS)
    deadline = time.monotonic() + 60
    while True:
        got = try_websocket(alice.url, f"/v1/sandboxes/{mine}/exec/stream", {"X-API-Key": alice.api_key})
        if not isinstance(got, tuple):
            got.close()
            break
        assert time.monotonic() < deadline, f"the team's stream slots did not come back: {got}"
        time.sleep(0.5)
    _echo_stream(alice, mine)


def test_watches_count_toward_the_cap(
    platform: Platform, alice: Tenant, bob: Tenant, sandboxes: tuple[str, str]
) -> None:
    mine, theirs = sandboxes
    with ExitStack() as stack:
        refused = []
        path = f"/v1/sandboxes/{mine}/watch?path=/tmp"
        for _ in range(ATTEMPTS):
            got = try_websocket(alice.url, path, {"X-API-Key": alice.api_key})
            if isinstance(got, tuple):
                refused.append(got)
            else:
                stack.enter_context(closing(got))
        assert ATTEMPTS - len(refused) <= CAP and refused, f"{len(refused)} refused of {ATTEMPTS}"
        assert all(s == 429 and b["error"]["code"] == "too_many_streams" for s, b in refused), refused[:3]
        _echo_stream(bob, theirs)  # the cap is the team's: another team's streams open
