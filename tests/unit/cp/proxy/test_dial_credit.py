"""DialPort's credit on the CP's side (``cp/proxy/stream.py``, session 16): with an agent that
keeps to it (its initial metadata says so) at most ``CREDIT`` messages go unacknowledged; an
agent from before gets every write at once. The gRPC call is a stand-in (not Warren's code)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpc.aio import EOF  # type: ignore[attr-defined]

from warren.cp.hosts.client_pool import HostClient
from warren.cp.proxy.stream import CREDIT, PIECE, DialStream
from warren.rpc import hostagent_pb2 as pb


class _Call:
    def __init__(self, credit: bool) -> None:
        self.metadata: Any = None
        self.written: list[pb.DialRequest] = []
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.md = (("warren-dial-credit", "1"),) if credit else ()

    async def write(self, msg: pb.DialRequest) -> None:
        self.written.append(msg)

    async def initial_metadata(self) -> Any:
        return self.md

    async def read(self) -> Any:
        return await self.events.get()

    def cancel(self) -> None:
        pass


class _Channel:
    def __init__(self, call: _Call) -> None:
        self.call = call

    def unary_unary(self, *_: Any, **__: Any) -> Any:  # the stub's other methods: unused
        return None

    unary_stream = stream_unary = unary_unary

    def stream_stream(self, *_: Any, **__: Any) -> Any:
        def multicallable(metadata: Any = None) -> _Call:
            self.call.metadata = metadata
            return self.call

        return multicallable


async def _opened(credit: bool) -> tuple[DialStream, _Call]:
    call = _Call(credit)
    client = HostClient("host-x", "127.0.0.1:1", _Channel(call), 0)  # type: ignore[arg-type]
    stream = DialStream(client, "sb-x", 8000)
    call.events.put_nowait(pb.DialEvent(connected=True))
    await stream.open()
    assert call.metadata == (("warren-dial-credit", "1"),)  # it asks every agent
    return stream, call


def _data(call: _Call) -> int:
    return sum(1 for m in call.written if m.WhichOneof("msg") == "data")


async def test_at_most_credit_messages_go_unacknowledged() -> None:
    stream, call = await _opened(credit=True)
    writer = asyncio.create_task(stream.write(bytes(10 * PIECE)))
    await asyncio.sleep(0.05)
    assert _data(call) == CREDIT and not writer.done()
    for _ in range(10 - CREDIT):
        call.events.put_nowait(pb.DialEvent(connected=True))  # one message written to the sandbox
        await asyncio.sleep(0.01)
    await asyncio.wait_for(writer, 5)
    assert _data(call) == 10
    call.events.put_nowait(pb.DialEvent(data=b"hi"))
    assert await stream.read(100) == b"hi"
    await stream.aclose()


async def test_an_agent_from_before_gets_every_write() -> None:
    stream, call = await _opened(credit=False)
    await asyncio.wait_for(stream.write(bytes(10 * PIECE)), 5)
    assert _data(call) == 10
    await stream.aclose()


async def test_a_write_waiting_for_credit_fails_when_the_call_ends() -> None:
    stream, call = await _opened(credit=True)
    writer = asyncio.create_task(stream.write(bytes((CREDIT + 1) * PIECE)))
    await asyncio.sleep(0.05)
    call.events.put_nowait(pb.DialEvent(closed=True))  # acknowledgements may follow `closed`...
    call.events.put_nowait(pb.DialEvent(connected=True))
    await asyncio.wait_for(writer, 5)
    assert _data(call) == CREDIT + 1
    writer2 = asyncio.create_task(stream.write(bytes(CREDIT * PIECE)))
    await asyncio.sleep(0.05)
    call.events.put_nowait(EOF)  # ...until the call ends
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(writer2, 5)
    assert await stream.read(100) == b""
    await stream.aclose()
