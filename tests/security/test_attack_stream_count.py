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

The module's platform runs with the default cap (64 streams), and what one held-back stream may
hold is bounded by the platform (docs/security.md). On the agent: the stdin the CP sent and the
agent has not yet written to the guest (the CP's credit window, 256 KiB: the agent acknowledges
what it writes; a terminal's, 128 KiB), the output it sent and the CP has not acknowledged
(256 KiB), and the guest's frames read ahead (128 KiB); the agent is judged against the same
64 MiB bound as the other memory attacks plus the two windows a stream. On the CP: that credit
window, and the WebSocket's own, up to three messages a stream at WARREN_WS_MAX_MESSAGE (1 MiB):
the one being handed on, the one read ahead, and the frame parser's buffer, which keeps its size;
the CP is judged against the bound plus four messages a stream. The flood stops at the first
sign of buffering past a bound, so a failure costs the shared machine little."""

from __future__ import annotations

import base64
import json
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import (
    BOUND_MIB,
    MIB,
    big_frame,
    stdin_message,
    watching,
)
from tests.security.test_what_held_api import PeakRss, open_handshake, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

CAP = 64  # WARREN_MAX_STREAMS_PER_TEAM's default, which this module's CP runs with
ATTEMPTS = CAP + 8  # more than the cap: the rest must be refused
MESSAGE = MIB - 4096  # just under the CP's default WebSocket message limit (1 MiB)
# RSS growth bounds (MiB), CP and agent, each the other memory attacks' bound plus what a stream
# may hold: on the agent its two credit windows (stdin and output, 256 KiB each; measured at
# 64 streams: +37-59 MiB), on the CP four WebSocket messages (see above; measured +203-259 MiB).
BOUNDS_MIB = (BOUND_MIB + 4 * CAP * MESSAGE // MIB, BOUND_MIB + CAP // 2)
PTY_INPUT = 64 << 10  # a terminal's largest input frame
SLEEP = {"cmd": "/bin/sleep", "args": ["600"]}
# A terminal that never reads: raw mode, so the line discipline holds its input back (a cooked
# one discards what does not fit a line, and a ^C in the input would end the command).
RAW_SLEEP = {"cmd": "/bin/sh", "args": ["-c", "stty raw -echo; exec sleep 600"]}
CAT = {"cmd": "cat", "args": []}  # echoes what it is sent, while its output is taken
YES = {"cmd": "yes", "args": ["x"]}  # prints as fast as its output is taken, reads nothing
RAW_YES = {"cmd": "/bin/sh", "args": ["-c", "stty raw -echo; exec yes x"]}
KILL_COMMANDS = (
    'for d in /proc/[0-9]*; do case "$(cat $d/comm)" in sleep|cat|yes) kill -9 ${d#/proc/};; esac; done'
    " 2>/dev/null; true"
)
TERMINAL_EVERY = 6  # of the streams opened, every sixth is a terminal
WATCHES_PER_SANDBOX = 32  # the guest's limit
FLOOD_S = 60  # the longest a flood runs, however the streams take it
# The most one stream is sent: more than the CP and the agent may hold together (their bounds),
# so what a stream takes past it they do not hold (or their RSS shows it). A stream that has
# ended was still read for up to 10 s (uvicorn's close timeout: the CP sent its error or exit and
# its close, and waited for the client's close, discarding what came): in the terminals case the
# guest detaches one or more of 32 unread terminals (what its lagging clients hold together is
# bounded, guest_agent/lag.py), whose stream then took 0.6-6.8 GiB until the rest stopped. Since
# session 28 the CP drops such a connection 1 MiB past its close
# (test_attack_session28_ws_protocol.py); the cap stays, for the tree before that.
STREAM_MAX = sum(BOUNDS_MIB) * MIB


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


def within(rss: PeakRss) -> bool:
    return all(g < b for g, b in zip(rss.grown_mib, BOUNDS_MIB, strict=True))


def flood(frames: dict[socket.socket, bytes], rss: PeakRss) -> int:
    """Send each connection's frame over and over until none takes more for 3 s, the server
    closed them all, or RSS grew past a bound (a stream that takes everything for a minute is
    a failure: its command does not read); a stream stops at STREAM_MAX. Returns the bytes
    sent."""
    pending = dict.fromkeys(frames, b"")
    taken = dict.fromkeys(frames, 0)
    for c in frames:
        c.setblocking(False)
    sent, last_progress = 0, time.monotonic()
    deadline = last_progress + FLOOD_S
    while pending and time.monotonic() - last_progress < 3 and within(rss):
        assert time.monotonic() < deadline, f"the streams took {sent // MIB} MiB in {FLOOD_S} s and more"
        for c in select.select([], list(pending), [], 0.2)[1]:
            data = pending[c] or frames[c]  # a frame is finished before the next one starts
            try:
                n = c.send(data)
            except OSError:
                del pending[c]
                continue
            pending[c], sent, last_progress = data[n:], sent + n, time.monotonic()
            taken[c] += n
            if taken[c] >= STREAM_MAX:
                del pending[c]
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


def _open_many(
    stack: ExitStack,
    t: Tenant,
    sb: str,
    command: dict = SLEEP,
    terminal_every: int = TERMINAL_EVERY,
    terminal: dict = RAW_SLEEP,
) -> tuple[dict[socket.socket, bytes], Refusals]:
    """ATTEMPTS streams of ``command``, every ``terminal_every``-th a terminal of ``terminal``
    (0: none): the open ones with the frame to flood each with, and the refusals."""
    frames: dict[socket.socket, bytes] = {}
    refused = []
    exec_flood, pty_flood = stdin_message(MESSAGE), big_frame(b"x" * PTY_INPUT, opcode=0x2)
    for i in range(ATTEMPTS):
        pty = terminal_every > 0 and i % terminal_every == terminal_every - 1
        path = f"/v1/sandboxes/{sb}/{'pty' if pty else 'exec/stream'}"
        got = try_websocket(t.url, path, {"X-API-Key": t.api_key})
        if isinstance(got, tuple):
            refused.append(got)
            continue
        stack.enter_context(closing(got))
        start = terminal | {"type": "start", "cols": 80, "rows": 24} if pty else command | {"type": "start"}
        got.sendall(text_frame(json.dumps(start)))
        frames[got] = pty_flood if pty else exec_flood
    return frames, refused


def _slots_come_back(alice: Tenant, mine: str) -> None:
    """Streams give their slots back when they end. A stream whose stdin is held back does not
    read its WebSocket, so its client's close is seen only once its command ends: end them."""
    alice.sh(mine, KILL_COMMANDS)
    deadline = time.monotonic() + 60
    while True:
        got = try_websocket(alice.url, f"/v1/sandboxes/{mine}/exec/stream", {"X-API-Key": alice.api_key})
        if not isinstance(got, tuple):
            got.close()
            break
        assert time.monotonic() < deadline, f"the team's stream slots did not come back: {got}"
        time.sleep(0.5)
    _echo_stream(alice, mine)


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
        assert within(rss), f"{len(frames)} streams: CP, agent grew {rss.grown_mib} MiB (bounds {BOUNDS_MIB})"
        assert len(frames) <= CAP
        assert refused and all(
            status == 429 and body["error"]["code"] == "too_many_streams" for status, body in refused
        ), refused[:3]
        # Another team is not held back by this one's streams.
        _echo_stream(bob, theirs)
        r = bob.x(theirs, "echo ok")
        assert r.status_code == 200 and r.json()["stdout"] == "ok\n", r.text
    _slots_come_back(alice, mine)


@pytest.mark.parametrize(
    ("command", "terminal_every"), [(CAT, 0), (YES, 0), (YES, 2)], ids=["cat", "yes", "yes-half-terminals"]
)
def test_many_streams_whose_client_never_reads_the_output(
    platform: Platform,
    alice: Tenant,
    bob: Tenant,
    sandboxes: tuple[str, str],
    command: dict,
    terminal_every: int,
) -> None:
    """Stdin sent and the output never read: the output is held back at the source (the agent
    sends at most its credit window unacknowledged and reads little of the guest's ahead, the CP
    acknowledges only what its WebSocket took), and ``cat`` then stops reading its stdin, which
    holds back as above (``yes`` never reads it). A terminal's output is held back by the guest
    (the agent reads little of it ahead); half the streams are terminals (a sandbox runs 32).
    With 32 unread, the guest detaches one or more within seconds (the output they hold together
    passes lag.py's bound): that stream ends with an error frame, unread, and is flooded at most
    STREAM_MAX. (Its terminals were all raw when looked at during the flood; waiting for each
    one's ``stty`` before flooding changed nothing: the detached stream still took ~1 GiB.)"""
    mine, theirs = sandboxes
    with ExitStack() as stack, watching(platform) as rss:
        frames, _ = _open_many(stack, alice, mine, command, terminal_every, terminal=RAW_YES)
        sent = flood(frames, rss)
        print(f"{len(frames)} streams of {command['cmd']}, output unread: {sent // MIB} MiB sent, "
              f"RSS growth {rss.grown_mib} MiB (CP, agent)")  # fmt: skip
        assert len(frames) == CAP
        assert within(rss), f"{len(frames)} streams: CP, agent grew {rss.grown_mib} MiB (bounds {BOUNDS_MIB})"
        r = bob.x(theirs, "echo ok")
        assert r.status_code == 200 and r.json()["stdout"] == "ok\n", r.text
    _slots_come_back(alice, mine)


def test_watches_count_toward_the_cap(
    platform: Platform, alice: Tenant, bob: Tenant, sandboxes: tuple[str, str]
) -> None:
    mine, theirs = sandboxes
    with ExitStack() as stack:
        # A sandbox holds at most 32 watches (413 past it): spread them over enough sandboxes
        # that the team's cap is what refuses them.
        extra = []
        for _ in range(-(-ATTEMPTS // WATCHES_PER_SANDBOX) - 1):
            r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
            assert r.status_code == 201, r.text
            extra.append(str(r.json()["id"]))
            stack.callback(alice.w, "DELETE", f"/v1/sandboxes/{extra[-1]}")
        refused = []
        for i in range(ATTEMPTS):
            path = f"/v1/sandboxes/{[mine, *extra][i // WATCHES_PER_SANDBOX]}/watch?path=/tmp"
            got = try_websocket(alice.url, path, {"X-API-Key": alice.api_key})
            if isinstance(got, tuple):
                refused.append(got)
            else:
                stack.enter_context(closing(got))
        assert ATTEMPTS - len(refused) <= CAP and refused, f"{len(refused)} refused of {ATTEMPTS}"
        assert all(s == 429 and b["error"]["code"] == "too_many_streams" for s, b in refused), refused[:3]
        _echo_stream(bob, theirs)  # the cap is the team's: another team's streams open


def test_a_command_that_reads_gets_every_byte_in_order(alice: Tenant, sandboxes: tuple[str, str]) -> None:
    """Credit changes nothing for a stream that keeps up: 24 MiB of bytes in stdin frames of
    mixed sizes (large and small, text and base64) come back from ``cat`` whole and in order,
    the client reading as it sends."""
    mine, _ = sandboxes
    rng, letters = random.Random(7), b"abcdefghijklmnopqrstuvwxyz\n"
    sizes = [rng.choice((1, 100, 32 << 10, 700 << 10)) for _ in range(80)]
    chunks = [rng.randbytes(n) if i % 2 else bytes(rng.choices(letters, k=n)) for i, n in enumerate(sizes)]
    want = b"".join(chunks)
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{mine}/exec/stream"
    headers = {"X-API-Key": alice.api_key}
    with ws_connect(url, additional_headers=headers, open_timeout=30, max_size=None) as c:
        c.send(json.dumps({"type": "start", "cmd": "cat", "args": []}))
        assert json.loads(c.recv(timeout=30))["type"] == "start"

        def send_all() -> None:
            for i, chunk in enumerate(chunks):
                data = {"data_b64": base64.b64encode(chunk).decode()} if i % 2 else {"data": chunk.decode()}
                c.send(json.dumps({"type": "stdin", **data}))
            c.send(json.dumps({"type": "close_stdin"}))

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        got = bytearray()
        while True:
            f = json.loads(c.recv(timeout=60))
            if f["type"] == "stdout":
                got += f["data"].encode() if "data" in f else base64.b64decode(f["data_b64"])
            elif f["type"] == "exit":
                break
        sender.join(60)
    assert f["exit_code"] == 0 and len(got) == len(want) and got == want
