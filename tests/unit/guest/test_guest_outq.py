"""A connection's send queue (guest_agent/outq.py): order kept across partial writes, big
immutable pieces held by reference (one copy for every client of a command), small ones gathered."""

from __future__ import annotations

import contextlib
import os
import socket

from warren.guest.guest_agent.outq import IOV_MAX, SHARE_MIN, TAIL_MAX, OutQueue


def _drain(q: OutQueue, sock: socket.socket, peer: socket.socket) -> bytes:
    got = b""
    while q:
        with contextlib.suppress(BlockingIOError):  # full: what is in flight is read below
            q.write_to(sock.fileno())
        got += peer.recv(1 << 20)
    return got


def test_every_byte_arrives_once_in_order_through_partial_writes() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    q = OutQueue()
    pieces = [os.urandom(n) for n in (5, 1, SHARE_MIN, 3, 70_000, 5, 1, 200_000)]
    pieces += [bytearray(b"mutable" * 1000), memoryview(os.urandom(9000))[17:]]
    for p in pieces:
        q.append(p)
    assert len(q) == sum(len(p) for p in pieces)
    with a, b:
        assert _drain(q, a, b) == b"".join(bytes(p) for p in pieces)
    assert len(q) == 0 and not q


def test_big_immutable_pieces_are_shared_and_the_rest_copied() -> None:
    chunk = os.urandom(SHARE_MIN)
    queues = [OutQueue() for _ in range(16)]
    for q in queues:
        q.append(b"hdr!!")
        q.append(chunk)
    assert all(q._parts[1] is chunk for q in queues)  # one copy for every client
    buf = bytearray(os.urandom(SHARE_MIN))
    q = OutQueue()
    q.append(buf)
    buf[:] = bytes(len(buf))  # the caller reuses its buffer: what was queued is unchanged
    assert bytes(q._parts[0]) != bytes(buf)


def test_small_pieces_gather_into_tails_of_bounded_size() -> None:
    q = OutQueue()
    for _ in range(100_000):
        q.append(b"x")
    assert len(q._parts) == -(-100_000 // TAIL_MAX)
    q.clear()
    assert len(q) == 0 and not q._parts


def test_one_write_takes_at_most_iov_max_pieces() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    q = OutQueue()
    pieces = [os.urandom(SHARE_MIN) for _ in range(IOV_MAX + 10)]
    for p in pieces:
        q.append(p)
    with a, b:
        b.setblocking(False)
        got = b""
        while q:
            with contextlib.suppress(BlockingIOError):
                q.write_to(a.fileno())
            got += b.recv(1 << 22)
        assert got == b"".join(pieces)
