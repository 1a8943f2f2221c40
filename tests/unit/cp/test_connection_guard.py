"""The connection guard (cp/connection_guard.py) on a real uvicorn server on loopback, with
small bounds: a 1 s head deadline, 20 connections per process, 8 per address."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
from starlette.types import Receive, Scope, Send

from tests.harness.uvicorn_thread import serving
from warren.cp.connection_guard import ConnectionLimits, GuardedHttpToolsProtocol

WAIT_S = 30


class Guarded(GuardedHttpToolsProtocol):
    limits = ConnectionLimits(head_timeout_s=1.0, max_connections=20, max_per_address=8, trusted_proxies="")
    by_address: ClassVar[dict[str, int]] = {}  # this class's own count


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":  # accepted, then idle until the client goes
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(app, http=Guarded, timeout_keep_alive=60) as port:
        yield port


def connect(port: int, source: str = "127.0.0.1", data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S, source_address=(source, 0))
    if data:
        s.sendall(data)
    return s


def until_closed(s: socket.socket) -> bytes:
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            got += chunk
    return got


def get(port: int, source: str) -> bytes:
    with connect(port, source, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") as s:
        try:
            return until_closed(s)
        except OSError:
            return b""


def test_a_head_not_whole_by_the_deadline_is_closed(port: int) -> None:
    with connect(port, "127.0.30.1", b"POST / HT") as partial, connect(port, "127.0.30.1") as silent:
        assert until_closed(partial).startswith(b"HTTP/1.1 408 ")
        assert until_closed(silent) == b""  # nothing sent: closed without an answer


def test_the_next_head_on_a_kept_alive_connection_has_its_deadline(port: int) -> None:
    with connect(port, "127.0.30.2", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") as s:
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET / HT")
        assert until_closed(s).startswith(b"HTTP/1.1 408 ")


def test_a_head_past_its_size_is_431(port: int) -> None:
    with connect(port, "127.0.30.3", b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (70 << 10)) as s:
        assert until_closed(s).startswith(b"HTTP/1.1 431 ")


def test_connections_past_the_address_cap_are_refused_until_they_go(port: int) -> None:
    held = [connect(port, "127.0.31.1", b"GET") for _ in range(8)]
    try:
        refused = get(port, "127.0.31.1")
        assert refused.startswith(b"HTTP/1.1 503 ") or refused == b"", refused[:100]
        assert get(port, "127.0.31.2").startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + WAIT_S
    while not get(port, "127.0.31.1").startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() < deadline, "the address was still refused after its connections went"
        time.sleep(0.1)
    assert Guarded.by_address.get("127.0.31.1", 0) == 0


def test_connections_past_the_process_cap_are_refused(port: int) -> None:
    held = [connect(port, f"127.0.32.{i % 4 + 1}", b"GET") for i in range(20)]
    try:
        refused = get(port, "127.0.33.1")
        assert refused.startswith(b"HTTP/1.1 503 ") or refused == b"", refused[:100]
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + WAIT_S
    while not get(port, "127.0.33.1").startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() < deadline, "still refused after the connections went"
        time.sleep(0.1)


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgraded_websockets_stay_counted_under_their_address(port: int) -> None:
    """Session 12: an upgrade took the connection out of its address's count, so one address
    held as many idle WebSockets as the process cap."""
    held = []
    try:
        for _ in range(8):
            s = connect(port, "127.0.34.1", UPGRADE)
            assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
            held.append(s)
        refused = get(port, "127.0.34.1")
        assert refused.startswith(b"HTTP/1.1 503 ") or refused == b"", refused[:100]
        assert Guarded.by_address.get("127.0.34.1") == 8
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + WAIT_S
    while not get(port, "127.0.34.1").startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() < deadline, "the address was still refused after its WebSockets went"
        time.sleep(0.1)
    assert Guarded.by_address.get("127.0.34.1", 0) == 0


def _answered_early(port: int, source: str, body_length: int) -> socket.socket:
    """A POST whose body the app answers without reading, its answer already taken."""
    s = connect(port, source, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_length)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    return s


def test_the_rest_of_an_answered_body_is_drained_and_the_connection_serves_on(port: int) -> None:
    """A client that sends its whole body before it reads (most do) gets its answer and keeps
    its connection: until session 26 the rest past 64 KiB was a "head" too large, and the close
    reset the client's unread answer."""
    with _answered_early(port, "127.0.30.4", 2 << 20) as s:
        s.sendall(b"b" * (2 << 20) + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert until_closed(s).startswith(b"HTTP/1.1 200 ")


def test_a_body_past_the_drain_bound_is_closed_without_another_answer(port: int) -> None:
    with _answered_early(port, "127.0.30.5", 1 << 30) as s:
        chunk, sent = b"b" * (1 << 20), 0
        with contextlib.suppress(OSError):
            while sent < 64 << 20:  # twice the bound: the server closes on the way
                s.sendall(chunk)
                sent += len(chunk)
        assert until_closed(s) == b""
        assert sent < 64 << 20


def test_a_trickled_rest_of_a_body_is_closed_at_the_deadline_without_a_408(port: int) -> None:
    with _answered_early(port, "127.0.30.6", 1 << 20) as s:
        s.sendall(b"b" * 100)
        assert until_closed(s) == b""  # the head deadline (1 s); its answer was the 200
