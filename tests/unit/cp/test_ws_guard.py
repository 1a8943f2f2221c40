"""``ws_guard.GuardedWebSocketProtocol``'s hold on a client that does not read, on a real uvicorn
server on loopback: with the frame budget lifted (the attack tests meet the budget first), a
client sending pings and reading nothing leaves the server's write buffer near its high-water
mark, not holding a pong for every ping."""

from __future__ import annotations

import asyncio
import gc
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from starlette.types import Receive, Scope, Send
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Frame
from websockets.sync.client import connect

from tests.harness.uvicorn_thread import serving
from warren.cp.ws_guard import GuardedWebSocketProtocol
from warren.cp.ws_pace import IdleFramePace

WAIT_S = 30
MIB = 1024 * 1024
PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125


class Unbudgeted(IdleFramePace):
    def take(self, frame: Frame) -> bool:
        return True


class Unpaced(GuardedWebSocketProtocol):
    """The guard without its frame budget; keeps its instances for the test to look at."""

    made: ClassVar[list[GuardedWebSocketProtocol]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle = Unbudgeted()
        Unpaced.made.append(self)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":  # accepted, then waits for a message that never comes
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(app, ws=Unpaced) as port:
        yield port


def test_a_client_that_reads_nothing_is_not_read_while_its_pongs_are_backed_up(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.setblocking(False)
    pings, sent, last = PING * 512, 0, time.monotonic()
    while sent < 64 * MIB and time.monotonic() - last < 2:  # until the socket takes no more
        if select.select([], [s], [], 0.2)[1]:
            n = s.send(pings)
            sent, last = sent + n, time.monotonic()
    held = max(p.transport.get_write_buffer_size() for p in Unpaced.made if p.transport is not None)
    s.close()
    assert held < 4 * MIB, f"{sent // MIB} MiB of pings sent: the server holds {held // MIB} MiB of pongs"


# --- a close the client does not read ------------------------------------------------------------
# Each way the server closes a WebSocket, to a client that reads nothing once the kernels' buffers
# are full (some frames left in the transport's buffer): the connection is gone ``close_timeout``
# after the close (cut to CLOSE_S here), not when the client goes.

CLOSE_S = 1.0
CLIENTS = 4  # connections a case opens and holds
BINARY = bytes([0x82, 0x80 | 126]) + (60000).to_bytes(2, "big") + b"\0" * 4 + b"x" * 60000
CLOSE_NOW = threading.Event()  # the app closes its WebSockets on "/close" once this is set


class Narrow(GuardedWebSocketProtocol):
    """The guard, with its socket's send buffer narrowed (the kernels' buffers full after a few
    KiB of pongs, as after a few MiB on a real path) and its close timeout cut to CLOSE_S; keeps
    weak references to its instances for the test to look at."""

    made: ClassVar[list[weakref.ref[GuardedWebSocketProtocol]]] = []
    codes: ClassVar[list[int | None]] = []  # the close each lost connection had been sent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_S
        Narrow.made.append(weakref.ref(self))

    def connection_made(self, transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        Narrow.codes.append(self.conn.close_sent.code if self.conn.close_sent else None)
        super().connection_lost(exc)


async def closing_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    if scope["path"] == "/close":
        while not CLOSE_NOW.is_set():
            await asyncio.sleep(0.02)
        await send({"type": "websocket.close", "code": 1000})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.fixture(scope="module")
def narrow() -> Iterator[int]:
    with serving(closing_app, ws=Narrow, ws_ping_interval=None) as port:
        yield port


@pytest.fixture(scope="module")
def keepalive() -> Iterator[int]:
    """The same with uvicorn's keepalive: a ping every 0.5 s, given up (1011) 0.5 s unanswered."""
    with serving(closing_app, ws=Narrow, ws_ping_interval=0.5, ws_ping_timeout=0.5) as port:
        yield port


def _handshake(port: int, path: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.settimeout(WAIT_S)
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
        + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)  # byte by byte: nothing past the handshake is read
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _live() -> list[GuardedWebSocketProtocol]:
    return [p for ref in Narrow.made if (p := ref()) is not None]


def _backed_up(s: socket.socket) -> None:
    """Pings (within the frame budget) until the server's pongs wait in its transport's buffer:
    the kernels' buffers are full."""
    for _ in range(40):
        try:
            s.sendall(PING * 5)
        except OSError:  # already dropped (the keepalive's close, then its deadline)
            return
        time.sleep(0.05)
        newest = Narrow.made[-1]()
        if newest is None or newest.transport.get_write_buffer_size():
            return
    raise AssertionError("the server's pongs never backed up")


def _flood(s: socket.socket, frames: bytes) -> None:
    """``frames`` until the socket takes nothing for 2 s (the server stopped reading) or resets."""
    s.setblocking(False)
    last = time.monotonic()
    while time.monotonic() - last < 2:
        if select.select([], [s], [], 0.2)[1]:
            try:
                s.send(frames)
            except OSError:
                return
            last = time.monotonic()


def _open_and_close(port: int, how: str) -> list[socket.socket]:
    clients = []
    CLOSE_NOW.clear()
    for _ in range(CLIENTS):
        s = _handshake(port, "/close" if how in ("app", "past-close") else "/wait")
        clients.append(s)
        if how == "budget":
            _flood(s, PING * 512)  # past the frame budget while the pongs are held: 1008
        else:
            _backed_up(s)
    if how in ("app", "past-close"):
        CLOSE_NOW.set()  # the app's close (1000), behind the pongs
        if how == "past-close":
            time.sleep(0.5)
            for s in clients:
                _flood(s, BINARY)  # past MAX_AFTER_CLOSE: dropped
    return clients


@pytest.mark.parametrize(
    ("server", "how", "code"),
    [
        ("narrow", "app", 1000),
        ("narrow", "budget", 1008),
        ("narrow", "past-close", 1000),
        ("keepalive", "keepalive", 1011),
    ],
    ids=["app-close", "frame-budget-1008", "sent-past-close", "keepalive-1011"],
)
def test_a_close_the_client_does_not_read_frees_the_connection(
    request: pytest.FixtureRequest, server: str, how: str, code: int
) -> None:
    port = request.getfixturevalue(server)
    Narrow.made.clear()
    Narrow.codes.clear()
    clients = _open_and_close(port, how)
    try:
        assert len(Narrow.made) == CLIENTS
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and _live():
            gc.collect()
            time.sleep(0.1)
        held = _live()
        assert len(held) == 0, (
            f"{len(held)} of {CLIENTS} connections held {WAIT_S} s after the server's close "
            f"(open: {[not p.disconnected for p in held]}, unsent: "
            f"{[p.transport.get_write_buffer_size() for p in held]} bytes)"
        )
        assert Narrow.codes == [code] * CLIENTS  # each closed the way the case meant
    finally:
        for s in clients:
            s.close()


def test_a_client_that_answers_the_close_gets_the_handshake(narrow: int) -> None:
    """The deadline takes nothing from a client that reads: the server's 1000, its reply."""
    CLOSE_NOW.set()
    with (
        connect(f"ws://127.0.0.1:{narrow}/close", open_timeout=WAIT_S) as ws,
        pytest.raises(ConnectionClosedOK) as closed,
    ):
        ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert closed.value.sent is not None and closed.value.sent.code == 1000
