"""``ws_guard.GuardedWebSocketProtocol``'s hold on a client that does not read, on a real uvicorn
server on loopback: with the frame budget lifted (the attack tests meet the budget first), a
client sending pings and reading nothing leaves the server's write buffer near its high-water
mark, not holding a pong for every ping."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from starlette.types import Receive, Scope, Send
from websockets.frames import Frame

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
