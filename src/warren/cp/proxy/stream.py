"""A byte stream to a port inside a sandbox (:class:`ByteStream`), and its gRPC form: one
``DialPort`` call to its host's agent (:class:`DialStream`, the fallback of ``data.py``'s data
port).

Bounded both ways: a write waits until gRPC took its message (at most ``PIECE`` bytes), and at
most ``_QUEUE`` messages wait to be read per stream; past that the agent waits (gRPC flow control).

The other way, an agent that keeps to credit (its initial metadata says so) acknowledges each
message once written to the sandbox, and at most ``CREDIT`` messages are on their way: the
agent's gRPC window, which its own bandwidth probes grow, held MiBs of what a sandbox did not
read (48 unread uploads: agent +196 MiB). An agent from before gets no credit kept.

DialPort calls go over a channel of their own per host (``cp/hosts/narrow_channel.py``), with gRPC's
bandwidth probes off: a stream's receive window stays at ``WINDOW``. On the host's shared
channel the probes grow every stream's window to MiBs, and what a preview client did not read
waited there (session 16: 48 unread previews held +245 MiB of the CP, ~5 MiB each, with the
agent's 1 MiB messages; now about ``WINDOW`` plus ``_QUEUE`` messages each). The price is a
connection's rate: at most ``WINDOW`` per round trip to the agent (~64 MB/s at 1 ms), on a path
that is the data port's fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # (the stubs lack it)

from warren.aio import cancel_and_wait
from warren.cp.hosts.agent_client import translate
from warren.cp.hosts.client_pool import HostClient
from warren.cp.hosts.narrow_channel import dial_channel, request_metadata, uninterposed
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb

CHUNK = 1 << 20  # the data port's frames (data.py)
PIECE = 32 << 10  # what one DialPort message carries to the agent (its reads are as large)
_QUEUE = 2
# Messages written to the agent and not yet acknowledged as written to the sandbox, past which
# a write waits (an agent that keeps to credit: agent/dial.py's CREDIT_KEY).
CREDIT = 4
_CREDIT_KEY = "warren-dial-credit"
_ASK_CREDIT = ((_CREDIT_KEY, "1"),)
_EOF = b""
_DIAL_PORT = f"/{pb.DESCRIPTOR.services_by_name['HostAgent'].full_name}/DialPort"


class ByteStream(Protocol):
    """What the HTTP and WebSocket relays need of a connection to a sandbox port."""

    @property
    def readable(self) -> bool: ...
    async def read(self, max_bytes: int) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close_write(self) -> None: ...
    def close_nowait(self) -> None: ...
    async def aclose(self) -> None: ...


def _dial_port(channel: grpc.aio.Channel) -> Any:
    """DialPort on ``channel`` without its interceptor (errors are mapped here instead).

    Any client interceptor makes grpc.aio relay ``write()`` through a queue, a task and an
    ``asyncio.wait`` per message and every read through the interceptor's generators: most of
    the proxy's own time per small request (bench/proxy.py). The error mapping is the same
    ``translate`` the interceptor uses."""
    return uninterposed(
        channel.stream_stream(
            _DIAL_PORT,
            request_serializer=pb.DialRequest.SerializeToString,
            response_deserializer=pb.DialEvent.FromString,
        )
    )


class DialStream:
    """One connection: :meth:`open`, then ``read``/``write``/``close_write``/``aclose``.
    Writes go straight to the call (``call.write``, no request iterator task in between)."""

    def __init__(self, client: HostClient, sandbox_id: str, port: int) -> None:
        self.sandbox_id, self.port = sandbox_id, port
        self._host_id = client.host_id
        self._admit = client.admit  # the BYOC address check: this channel has no interceptor
        self._in: asyncio.Queue[bytes | BaseException] = asyncio.Queue(_QUEUE)
        self._start = _dial_port(dial_channel(client))  # called in open, after the check
        self._call: Any = None
        self._lock = asyncio.Lock()  # one message in flight at a time (a gRPC call's rule)
        self._buf = memoryview(b"")
        self._eof = False
        self._reader: asyncio.Task[None] | None = None
        self._credit = False  # the agent acknowledges our messages
        self._unacked = 0
        self._room = asyncio.Event()
        self._ended = False  # the call's events have ended: no acknowledgement will come

    async def _send(self, msg: pb.DialRequest) -> None:
        try:
            async with self._lock:
                await self._call.write(msg)
        except grpc.aio.AioRpcError as e:
            raise translate(e, self._host_id) from e
        except asyncio.InvalidStateError:
            raise ConnectionError("the dial stream has ended") from None

    async def open(self) -> None:
        """Wait for ``connected`` (AgentError: port_not_open, paused, unknown sandbox…)."""
        try:
            await self._admit()  # before the call: a call connects the channel
            self._call = self._start(metadata=request_metadata(*_ASK_CREDIT))
            await self._send(pb.DialRequest(open=pb.DialOpen(sandbox_id=self.sandbox_id, port=self.port)))
            try:
                md = await self._call.initial_metadata()
                self._credit = md is not None and _CREDIT_KEY in dict(md)
                ev = await self._call.read()
            except grpc.aio.AioRpcError as e:
                raise translate(e, self._host_id) from e
        except BaseException:
            if self._call is not None:
                self._call.cancel()
            raise
        if ev is EOF or ev.WhichOneof("event") != "connected":
            self._call.cancel()
            raise AgentError("the agent did not connect the port", rpc_code="UNAVAILABLE")
        self._reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        """The agent's events to the end of the call: its bytes into the queue, and (after
        ``closed`` too: the sandbox may still read) its acknowledgements."""
        ended = False
        try:
            while True:
                ev = await self._call.read()
                if ev is EOF:
                    break
                kind = ev.WhichOneof("event")
                if kind == "connected":  # one more of our messages written to the sandbox
                    self._unacked = max(0, self._unacked - 1)
                    self._room.set()
                elif kind == "data" and not ended:
                    await self._in.put(ev.data)
                elif kind == "closed" and not ended:
                    ended = True
                    await self._in.put(_EOF)
            if not ended:
                await self._in.put(_EOF)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            await self._in.put(translate(e, self._host_id))
        except BaseException as e:
            await self._in.put(e)
        finally:
            self._ended = True
            self._room.set()

    @property
    def readable(self) -> bool:
        """Bytes (or the end) already arrived: for an idle pooled connection, the server hung up."""
        return bool(self._buf) or not self._in.empty() or self._eof

    async def read(self, max_bytes: int) -> bytes:
        if not self._buf:
            if self._eof:
                return b""
            item = await self._in.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            if len(item) <= max_bytes:
                return item  # the common case: a whole message, no copy
            self._buf = memoryview(item)
        out, self._buf = self._buf[:max_bytes], self._buf[max_bytes:]
        return bytes(out)

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), PIECE):
            while self._credit and self._unacked >= CREDIT:
                if self._ended:
                    raise ConnectionError("the dial stream has ended")
                self._room.clear()
                await self._room.wait()
            self._unacked += 1
            await self._send(pb.DialRequest(data=data[i : i + PIECE]))

    async def close_write(self) -> None:
        await self._send(pb.DialRequest(close_write=True))

    def close_nowait(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        if self._call is not None:
            self._call.cancel()
