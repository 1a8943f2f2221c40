"""Attack: make the control plane (or ``warren proxy``) buffer hundreds of MiB through
WebSockets. Each connection sends 15 MiB messages at something that does not read them (an exec
stream whose command never reads stdin, a terminal, the watch API, a preview of a sandbox
WebSocket server that never reads), several connections at once; or a sandbox server sends 15 MiB
messages to a preview client that never reads. The servers must refuse a message over their
limit (close 1009) before holding it, so the memory held stays bounded; a refused connection
leaves every other one alone.

Each flood stops at the first sign of buffering (RSS growth >= 64 MiB), as
test_what_held_api.py's stdin test does, so a failure costs the shared machine little."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import psutil
import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.harness.warren_proxy import running_proxy
from tests.security.test_what_held_api import PeakRss, raw_websocket, text_frame
from warren.sdk import Sandbox

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1024 * 1024
BIG = 15 * MIB
CONNS = 8
BOUND_MIB = 64  # RSS growth past this is buffering, not a connection's working set

# A sandbox WebSocket server on PORT that never reads after the handshake ("hold"), or that
# sends 15 MiB binary messages for as long as it can ("flood"). Small socket buffers, so what
# is held is held by the proxy, not by the kernel.
WS_SERVER = r"""
import base64, hashlib, socket, struct, sys, threading, time
port, mode = int(sys.argv[1]), sys.argv[2]
def serve(c):
    req = b""
    while b"\r\n\r\n" not in req: req += c.recv(1)
    lines = req.split(b"\r\n")
    key = [l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    if mode == "flood":
        n = 15 << 20
        frame = b"\x82\x7f" + struct.pack(">Q", n) + b"z" * n
        try:
            while True: c.sendall(frame)
        except OSError:
            return
    time.sleep(3600)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
s.bind(("127.0.0.1", port)); s.listen(64)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
HOLD_PORT, FLOOD_PORT = 8010, 8011
# A sandbox server's flood at clients that do not read: watched until the RSS peaks stand still
# this long (before the bound, the proxy's buffering passed BOUND_MIB well within it).
STILL_S = 2.5


def big_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client frame of any size; the zero mask (legal, RFC 6455 5.3) keeps it cheap."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", len(payload)) + b"\0\0\0\0" + payload


def fragmented(payload: bytes, piece: int) -> bytes:
    """One client text message sent as fragments of ``piece`` bytes (RFC 6455 5.4)."""
    parts = [payload[i : i + piece] for i in range(0, len(payload), piece)]
    out = b""
    for i, part in enumerate(parts):
        frame = big_frame(part, opcode=0x0 if i else 0x1)
        out += bytes([frame[0] & (0x7F if i < len(parts) - 1 else 0xFF)]) + frame[1:]  # FIN on the last
    return out


def stdin_payload(size: int) -> bytes:
    head, tail = b'{"type": "stdin", "data": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def stdin_message(size: int) -> bytes:
    return big_frame(stdin_payload(size))


def flood(conns: list[socket.socket], frame: bytes, rss: PeakRss) -> int:
    """Send ``frame`` over and over on every connection until none takes more for 1.5 s, the
    server closed them all, or RSS grew past the bound. Returns the bytes sent."""
    pending = {c: b"" for c in conns}
    for c in conns:
        c.setblocking(False)
    sent, last_progress = 0, time.monotonic()
    while pending and time.monotonic() - last_progress < 1.5 and max(rss.grown_mib) < BOUND_MIB:
        for c in select.select([], list(pending), [], 0.2)[1]:
            data = pending[c] or frame  # a frame is finished before the next one starts
            try:
                n = c.send(data)
            except OSError:  # closed by the server (1009, then the socket): done with this one
                del pending[c]
                continue
            pending[c], sent, last_progress = data[n:], sent + n, time.monotonic()
    return sent


def open_ws(stack: ExitStack, url: str, path: str, headers: dict[str, str]) -> socket.socket:
    return stack.enter_context(closing(raw_websocket(url, path, headers)))


def settle(pids: list[int]) -> None:
    """Until the processes' RSS stops moving (an earlier test's connections are being torn
    down), so one test's growth is not counted in the next one's."""
    procs = [psutil.Process(p) for p in pids]
    last, deadline = [-1] * len(procs), time.monotonic() + 30
    while time.monotonic() < deadline:
        now = [p.memory_info().rss // MIB for p in procs]
        if all(abs(a - b) <= 1 for a, b in zip(now, last, strict=True)):
            return
        last = now
        time.sleep(1)


def watching(platform: Platform, *pids: int) -> PeakRss:
    """PeakRss of the CP and the agent, and of ``pids`` (a ``warren proxy``) too."""
    settle([platform.cp.pid, platform.agents[0].proc.pid, *pids])
    rss = PeakRss(platform)
    for pid in pids:
        p = psutil.Process(pid)
        rss.procs.append(p)
        rss.base.append(p.memory_info().rss)
        rss.peak.append(rss.base[-1])
    return rss


def assert_bounded(what: str, sent: int, rss: PeakRss) -> None:
    print(f"{what}: {sent // MIB} MiB sent, RSS growth {rss.grown_mib} MiB")  # the figures, with -s
    assert max(rss.grown_mib) < BOUND_MIB, (
        f"{what}: {sent // MIB} MiB sent over {CONNS} connections; RSS grew by {rss.grown_mib} MiB "
        "(CP, agent[, proxy])"
    )


@pytest.fixture(scope="module")
def mine(alice: Tenant) -> Iterator[dict[str, str]]:
    """The attacker's sandbox, with the two sandbox WebSocket servers running."""
    r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 256})
    assert r.status_code == 201, r.text
    sb = {"id": str(r.json()["id"]), "token": str(r.json()["traffic_token"])}
    alice.sh(sb["id"], f"cat > /tmp/ws.py <<'EOF'\n{WS_SERVER}\nEOF")
    for port, mode in ((HOLD_PORT, "hold"), (FLOOD_PORT, "flood")):
        alice.sh(sb["id"], f"(setsid python3 /tmp/ws.py {port} {mode} >/tmp/ws{port}.log 2>&1 &)")
    probe = "python3 -c \"import socket; [socket.create_connection(('127.0.0.1', p), 1) for p in ({}, {})]\""
    deadline = time.monotonic() + 30
    while alice.x(sb["id"], probe.format(HOLD_PORT, FLOOD_PORT)).json()["exit_code"] != 0:
        assert time.monotonic() < deadline, "the sandbox WebSocket servers did not start"
        time.sleep(0.2)
    yield sb
    alice.w("DELETE", f"/v1/sandboxes/{sb['id']}")


@pytest.fixture(scope="module")
def warren_proxy(platform: Platform) -> Iterator[tuple[str, int]]:
    """A ``warren proxy`` process beside the CP: its URL and pid. Its graceful stop waits
    seconds for the relays it still holds: not tested here, so it is killed after 2 s."""
    with running_proxy(platform, stop_wait_s=2) as proxy:
        yield proxy.url, proxy.pid


def _exec_streams(stack: ExitStack, t: Tenant, sb: str, n: int) -> list[socket.socket]:
    conns = []
    for _ in range(n):
        c = open_ws(stack, t.url, f"/v1/sandboxes/{sb}/exec/stream", {"X-API-Key": t.api_key})
        c.sendall(text_frame(json.dumps({"type": "start", "cmd": "/bin/sleep", "args": ["600"]})))
        conns.append(c)
    return conns


def test_large_stdin_messages_at_commands_that_do_not_read(
    platform: Platform, alice: Tenant, mine: dict[str, str]
) -> None:
    with ExitStack() as stack, watching(platform) as rss:
        conns = _exec_streams(stack, alice, mine["id"], CONNS)
        sent = flood(conns, stdin_message(BIG), rss)
    assert_bounded("exec stdin", sent, rss)


def test_large_messages_at_terminals(platform: Platform, alice: Tenant, mine: dict[str, str]) -> None:
    start = text_frame(
        json.dumps({"type": "start", "cmd": "/bin/sleep", "args": ["600"], "cols": 80, "rows": 24})
    )
    with ExitStack() as stack, watching(platform) as rss:
        conns = []
        for _ in range(CONNS):
            c = open_ws(stack, alice.url, f"/v1/sandboxes/{mine['id']}/pty", {"X-API-Key": alice.api_key})
            conns.append(c)
            c.sendall(start)
        sent = flood(conns, big_frame(os.urandom(1024) * (BIG // 1024), opcode=0x2), rss)
    assert_bounded("pty input", sent, rss)


def test_large_messages_at_the_watch_api(platform: Platform, alice: Tenant, mine: dict[str, str]) -> None:
    path = f"/v1/sandboxes/{mine['id']}/watch?path=/tmp"
    with ExitStack() as stack, watching(platform) as rss:
        conns = [open_ws(stack, alice.url, path, {"X-API-Key": alice.api_key}) for _ in range(CONNS)]
        sent = flood(conns, big_frame(b"x" * BIG), rss)
    assert_bounded("watch", sent, rss)


def _via(platform: Platform, warren_proxy: tuple[str, int], via: str) -> tuple[str, list[int]]:
    """The preview proxy's URL, and the pids watched beyond the CP's and the agent's."""
    return (platform.url, []) if via == "cp" else (warren_proxy[0], [warren_proxy[1]])


@pytest.mark.parametrize("via", ["cp", "warren proxy"])
def test_large_messages_through_the_preview_proxy_to_a_server_that_does_not_read(
    platform: Platform, mine: dict[str, str], warren_proxy: tuple[str, int], via: str
) -> None:
    url, pids = _via(platform, warren_proxy, via)
    path = f"/v1/sandboxes/{mine['id']}/ports/{HOLD_PORT}/"
    with ExitStack() as stack, watching(platform, *pids) as rss:
        conns = [open_ws(stack, url, path, {"X-Warren-Traffic-Token": mine["token"]}) for _ in range(CONNS)]
        sent = flood(conns, big_frame(b"x" * BIG, opcode=0x2), rss)
    assert_bounded(f"preview via {via}", sent, rss)


@pytest.mark.parametrize("via", ["cp", "warren proxy"])
def test_large_messages_from_a_sandbox_server_to_preview_clients_that_do_not_read(
    platform: Platform, mine: dict[str, str], warren_proxy: tuple[str, int], via: str
) -> None:
    """CONNS preview clients of the flooding server that never read; until nothing grows."""
    url, pids = _via(platform, warren_proxy, via)
    path = f"/v1/sandboxes/{mine['id']}/ports/{FLOOD_PORT}/"
    with ExitStack() as stack, watching(platform, *pids) as rss:
        for _ in range(CONNS):
            open_ws(stack, url, path, {"X-Warren-Traffic-Token": mine["token"]})
        peak, still_since, deadline = -1, time.monotonic(), time.monotonic() + 60
        while time.monotonic() - still_since < STILL_S and time.monotonic() < deadline:
            if max(rss.grown_mib) >= BOUND_MIB:
                break
            if max(rss.grown_mib) > peak:
                peak, still_since = max(rss.grown_mib), time.monotonic()
            time.sleep(0.2)
    assert_bounded(f"sandbox flood via {via}", 0, rss)


def _close_code(c: socket.socket) -> int | None:
    """Reads server frames until a close frame; its code (None: the socket closed first)."""
    c.setblocking(True)
    c.settimeout(30)
    buf = b""

    def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            data = c.recv(65536)
            if not data:
                raise EOFError
            buf += data
        out, buf = buf[:n], buf[n:]
        return out

    try:
        while True:
            op, n = need(2)
            n &= 127
            n = (
                struct.unpack(">H", need(2))[0]
                if n == 126
                else struct.unpack(">Q", need(8))[0]
                if n == 127
                else n
            )
            payload = need(n)
            if op & 0x0F == 0x8:
                return int(struct.unpack(">H", payload[:2])[0]) if len(payload) >= 2 else None
    except (EOFError, OSError):
        return None


def test_a_message_over_the_limit_closes_its_connection_with_1009_and_no_other(
    platform: Platform, alice: Tenant, mine: dict[str, str]
) -> None:
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{mine['id']}/exec/stream"
    with ws_connect(url, additional_headers={"X-API-Key": alice.api_key}, open_timeout=30) as other:
        other.send(json.dumps({"type": "start", "cmd": "cat", "args": [], "close_stdin": False}))
        assert json.loads(other.recv(timeout=30))["type"] == "start"
        with ExitStack() as stack:
            (c,) = _exec_streams(stack, alice, mine["id"], 1)
            message = stdin_message(BIG)
            with contextlib.suppress(OSError):  # the server may close before taking it all
                c.sendall(message)
            assert _close_code(c) == 1009
            # The same in 64 KiB fragments: the limit is on the message, not on a frame.
            (c,) = _exec_streams(stack, alice, mine["id"], 1)
            with contextlib.suppress(OSError):
                c.sendall(fragmented(stdin_payload(4 * MIB), 64 << 10))
            assert _close_code(c) == 1009
        other.send(json.dumps({"type": "stdin", "data": "still here\n"}))
        assert json.loads(other.recv(timeout=30)) == {"type": "stdout", "data": "still here\n"}


def test_the_sdk_chunks_stdin_larger_than_one_message(
    platform: Platform, alice: Tenant, mine: dict[str, str]
) -> None:
    """A legitimate client is not cut off by the limit: the SDK splits large stdin."""
    size = 5 * MIB
    # closing, not the Sandbox itself: leaving its block would kill the shared sandbox.
    with closing(Sandbox.connect(mine["id"], url=alice.url, api_key=alice.api_key)) as sbx:
        h = sbx.commands.run("wc -c", background=True, stdin=True)
        h.send_stdin(b"y" * size)
        h.send_stdin("z" * size)
        h.close_stdin()
        assert h.wait().stdout.strip() == str(2 * size)
        r = sbx.commands.run("wc -c", stdin=b"w" * size, on_stdout=lambda _: None)
        assert r.stdout.strip() == str(size)


@pytest.mark.parametrize("via", ["cp", "warren proxy"])
def test_preview_messages_over_the_limit_close_with_1009_either_way(
    platform: Platform, mine: dict[str, str], warren_proxy: tuple[str, int], via: str
) -> None:
    url, _ = _via(platform, warren_proxy, via)
    token = {"X-Warren-Traffic-Token": mine["token"]}
    with ExitStack() as stack:
        c = open_ws(stack, url, f"/v1/sandboxes/{mine['id']}/ports/{HOLD_PORT}/", token)
        with contextlib.suppress(OSError):  # the server may close before taking it all
            c.sendall(big_frame(b"x" * BIG, opcode=0x2))
        assert _close_code(c) == 1009  # the client's message, refused by the CP or proxy
        c = open_ws(stack, url, f"/v1/sandboxes/{mine['id']}/ports/{FLOOD_PORT}/", token)
        assert _close_code(c) == 1009  # the sandbox server's message, refused by the proxy
