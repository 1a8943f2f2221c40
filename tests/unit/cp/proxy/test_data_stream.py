"""The CP's end of a data-port connection (``cp/proxy/data.py``): frames parsed as they stream,
in order whatever the reads' boundaries, and what a connection holds unread bounded (session 15:
2 MiB plus one read before the agent was paused)."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from warren.cp.proxy import data
from warren.cp.proxy.data import READ_PIECE, DataStream, _Protocol

HEADER = struct.Struct("!I")


def _framed(payloads: list[bytes], end: bool = True) -> bytes:
    out = [b"\x01"] + [HEADER.pack(len(p)) + p for p in payloads]
    return b"".join(out) + (HEADER.pack(0) if end else b"")


def _feed(p: _Protocol, wire: bytes, cuts: list[int]) -> None:
    """``wire`` into ``p`` as reads ending at ``cuts``, as the loop hands them over."""
    start = 0
    for end in [*cuts, len(wire)]:
        piece = wire[start:end]
        while piece:
            buf = p.get_buffer(-1)
            n = min(len(buf), len(piece))
            buf[:n] = piece[:n]
            p.buffer_updated(n)
            piece = piece[n:]
        start = end


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    rng = random.Random(15)
    payloads = [rng.randbytes(rng.choice((1, 3, 4, 5, 1000, 70_000, 300_000))) for _ in range(40)]
    wire = _framed(payloads)
    for cuts in ([], list(range(1, 64)), sorted(rng.sample(range(1, len(wire)), 500))):
        p = _Protocol()
        _feed(p, wire, cuts)
        assert p.error is None and p.ended
        assert b"".join(p.frames) == b"".join(payloads)
        assert max(len(f) for f in p.frames) <= READ_PIECE  # never a whole large frame at once


def test_bad_framing_and_a_refusal_fail_the_connection() -> None:
    p = _Protocol()
    _feed(p, b"\x00", [])
    assert isinstance(p.error, ConnectionError) and not p.frames
    p = _Protocol()
    _feed(p, b"\x01" + HEADER.pack(data.MAX_FRAME + 1), [3])
    assert isinstance(p.error, ConnectionError)
    p = _Protocol()
    _feed(p, _framed([b"a"]) + HEADER.pack(1) + b"b", [])  # data after the end frame
    assert isinstance(p.error, ConnectionError)


async def test_an_unread_stream_holds_a_bounded_amount_and_loses_nothing() -> None:
    """A peer that sends 16 MiB as fast as it can to a stream nobody reads: the stream pauses
    its socket past ``_HIGH`` (plus one read); read later, every byte comes, in order."""
    total, frame = 16 << 20, 256 << 10
    body = bytes(i % 251 for i in range(total))
    sent = asyncio.Event()

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x01")
        for i in range(0, total, frame):
            writer.write(HEADER.pack(frame) + body[i : i + frame])
            await writer.drain()
        writer.write(HEADER.pack(0))
        await writer.drain()
        sent.set()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(agent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = DataStream(None, "sb-x", 1)  # type: ignore[arg-type]  # (opened by hand below)
    t, _ = await asyncio.get_running_loop().create_connection(lambda: stream._p, "127.0.0.1", port)
    try:
        # Until the peer's writes stall (the kernel's buffers full) and nothing more arrives.
        last, still = -1, 0
        while still < 20:
            await asyncio.sleep(0.02)
            still = still + 1 if stream._p.queued == last else 0
            last = stream._p.queued
        assert not sent.is_set()
        assert stream._p.read_paused
        assert stream._p.queued <= data._HIGH + READ_PIECE, stream._p.queued
        got = bytearray()
        while chunk := await stream.read(1 << 20):
            got += chunk
        assert len(got) == total and got == body
    finally:
        t.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("size", [0, 1, 4])
def test_short_reads_before_the_accept_byte_are_kept(size: int) -> None:
    p = _Protocol()
    wire = _framed([b"x" * size])
    _feed(p, wire, list(range(1, len(wire))))  # one byte a read
    assert p.error is None and p.ended and b"".join(p.frames) == b"x" * size
