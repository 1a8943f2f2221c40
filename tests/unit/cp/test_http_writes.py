"""A response's head written with its body (cp/http_writes.py), in GuardedHttpToolsProtocol on a
real uvicorn server on loopback: the same bytes in the same order, in one segment when the head
has a length; a stream's head and a HEAD answer not held back."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from starlette.types import Receive, Scope, Send

from tests.harness.uvicorn_thread import serving
from warren.cp.connection_guard import ConnectionLimits, GuardedHttpToolsProtocol

WAIT_S = 30
BODY = b'{"ok": true}'


class Guarded(GuardedHttpToolsProtocol):
    limits = ConnectionLimits(head_timeout_s=30.0, max_connections=50, max_per_address=50, trusted_proxies="")
    by_address: ClassVar[dict[str, int]] = {}


# The stream's first chunk waits for the client to have seen the head.
release = threading.Event()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while not release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})
        return
    if scope["path"] == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(app, http=Guarded) as port:
        yield port


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)


def request(method: str, path: str, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


def read_until(s: socket.socket, end: bytes) -> bytes:
    got = b""
    while not got.endswith(end):
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return got


def data_segments_in(s: socket.socket) -> int:
    """``tcpi_data_segs_in`` of the socket's ``struct tcp_info`` (Linux >= 4.6): segments that
    carried data, whatever the reads made of them."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


def test_a_sized_answer_is_one_segment(port: int) -> None:
    # One write of head and body is one data segment on loopback (two writes are two: the
    # transport sends at once, TCP_NODELAY), counted by the client's kernel.
    with connect(port) as s:
        for _ in range(3):  # kept alive: each cycle's transport holds its head
            before = data_segments_in(s)
            s.sendall(request("GET", "/"))
            got = read_until(s, BODY)
            assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncontent-length: 12\r\n" in got
            assert data_segments_in(s) - before == 1


def test_a_head_answer_is_not_held(port: int) -> None:
    with connect(port) as s:
        s.sendall(request("HEAD", "/"))
        head = read_until(s, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 12" in head
        s.sendall(request("GET", "/"))  # and the connection goes on
        assert read_until(s, BODY).startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_closing_answer_and_an_empty_one(port: int) -> None:
    with connect(port) as s:
        s.sendall(request("GET", "/empty"))
        assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 204 No Content\r\n")
        s.sendall(request("HEAD", "/", close=True))
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\n")


def test_a_streams_head_goes_out_before_its_first_chunk(port: int) -> None:
    release.clear()
    try:
        with connect(port) as s:
            s.sendall(request("GET", "/stream"))
            head = read_until(s, b"\r\n\r\n")  # would wait forever if the head were held
            assert b"transfer-encoding: chunked" in head
            release.set()
            assert read_until(s, b"0\r\n\r\n").endswith(b"4\r\nlate\r\n0\r\n\r\n")
    finally:
        release.set()
