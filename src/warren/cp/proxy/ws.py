"""WebSockets to a sandbox port: the client's ASGI WebSocket on one side, and on the other a
WebSocket client (``websockets``' sans-I/O protocol) speaking over a byte stream to the
sandbox's server. Messages are relayed as they come, one at a time, each bounded by
``max_size``; pings, pongs and the closing handshake are handled per side.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Receive, Scope, Send
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.uri import parse_uri

from warren.aio import until_first
from warren.cp.proxy import pace
from warren.cp.proxy.stream import ByteStream
from warren.cp.ws_pace import IDLE_REASON, IdleFramePace

log = logging.getLogger("warren.proxy")

# The largest message from the sandbox's server, unless the caller says (the proxy passes
# WARREN_WS_MAX_MESSAGE, the limit its uvicorn server puts on the client's side): one over it
# closes both sides with 1009.
MAX_MESSAGE = 1 << 20
# Frames from the sandbox that complete no message (pings, pongs, small fragments): ws_pace.py's
# budget; a message's fragments are joined as they come.
# Every frame from the sandbox, per connection: FRAMES_BURST at once, then FRAMES_PER_S (the
# relay then waits), and the loop is let go every FRAMES_PER_TURN. A client reading 1-byte
# messages as fast as it could (3 bytes each from the server) kept a CP core busy and another
# team's API calls at a 2 s median (session 22, test_attack_session22_preview_chunks).
FRAMES_BURST = 4096
FRAMES_PER_S = 4096.0
FRAMES_PER_TURN = 256
# What one read from the sandbox takes: its frames are parsed at once and wait for the pace
# (4 KiB: at most ~1400 frames, ~0.25 MiB of them, per connection).
FEED = 4 << 10
# Set by the protocol itself for this hop (extensions are not negotiated end to end).
_OWN_HEADERS = frozenset(
    {
        "host",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    }
)


class HandshakeFailed(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Upstream:
    def __init__(self, stream: ByteStream, proto: ClientProtocol) -> None:
        self.stream, self.proto = stream, proto
        self._lock = asyncio.Lock()
        # Frames that came in the same read as the 101 (a server that greets at once).
        self.early: list[Request | Response | Frame] = []

    async def flush(self) -> None:
        """What the protocol has to send (an empty item: it half-closes)."""
        async with self._lock:
            for data in self.proto.data_to_send():
                if data:
                    await self.stream.write(data)
                else:
                    await self.stream.close_write()


async def handshake(
    stream: ByteStream,
    *,
    host: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    subprotocols: list[str],
    max_size: int = MAX_MESSAGE,
) -> _Upstream:
    """The upgrade request to the sandbox's server and its 101 (HandshakeFailed otherwise)."""
    proto = ClientProtocol(
        parse_uri(f"ws://localhost{target}"),
        subprotocols=subprotocols or None,  # type: ignore[arg-type]
        max_size=max_size,
    )
    req = proto.connect()
    del req.headers["Host"]
    req.headers["Host"] = host
    for k, v in headers:
        name = k.decode("latin-1")
        if name.lower() not in _OWN_HEADERS:
            req.headers[name] = v.decode("latin-1")
    proto.send_request(req)
    up = _Upstream(stream, proto)
    await up.flush()
    while True:
        data = await stream.read(FEED)
        if data:
            proto.receive_data(data)
        else:
            proto.receive_eof()
        events = proto.events_received()
        for i, ev in enumerate(events):
            if isinstance(ev, Response):
                if proto.handshake_exc is not None:
                    raise HandshakeFailed(
                        ev.status_code, f"the sandbox's server refused: {proto.handshake_exc}"
                    )
                up.early = list(events[i + 1 :])
                return up
        if not data:
            raise HandshakeFailed(None, "the sandbox's server closed during the handshake")


async def relay(up: _Upstream, receive: Receive, send: Send) -> None:
    """Messages both ways until either side closes."""
    tasks = {asyncio.create_task(_from_client(up, receive)), asyncio.create_task(_from_upstream(up, send))}
    await until_first(*tasks)
    for t in tasks:
        if not t.cancelled() and (e := t.exception()) is not None:
            log.info("event=proxy_ws_end error=%r", e)


async def _from_client(up: _Upstream, receive: Receive) -> None:
    while True:
        msg = await receive()
        kind = msg["type"]
        if kind == "websocket.receive":
            if msg.get("text") is not None:
                up.proto.send_text(msg["text"].encode())
            else:
                up.proto.send_binary(msg.get("bytes") or b"")
            await up.flush()
        elif kind == "websocket.disconnect":
            code = msg.get("code", 1000)
            up.proto.send_close(code if code in (1000, 1001) or 3000 <= code <= 4999 else 1000)
            await up.flush()
            return


_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class _FramePace:
    """Every frame's share of the loop: the connection's (FRAMES_BURST, then FRAMES_PER_S) and
    its account's (pace.py)."""

    def __init__(self) -> None:
        self.frames, self.turn = pace.Bucket(FRAMES_BURST, FRAMES_PER_S), 0

    def count(self) -> bool:
        """One frame more; True when the relay should :meth:`wait` before the next."""
        pace.take(self.frames)
        self.turn += 1
        return self.turn >= FRAMES_PER_TURN or pace.left(self.frames) < 1

    async def wait(self) -> None:
        """Lets the loop go; a spent budget waits for a turn's worth."""
        self.turn = 0
        await asyncio.sleep(0)
        while (wait := pace.wait_s(self.frames, FRAMES_PER_TURN)) > 0:  # noqa: ASYNC110 (a pace, no event)
            await asyncio.sleep(wait)


async def _from_upstream(up: _Upstream, send: Send) -> None:
    message = bytearray()
    text = False
    pace, frames = IdleFramePace(), _FramePace()
    events, data = up.early, b"early"
    while True:
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            if frames.count():
                await frames.wait()
            op = frame.opcode
            if not pace.take(frame):
                if up.proto.state is State.OPEN:
                    up.proto.send_close(1008, IDLE_REASON)
                await up.flush()
                await send({"type": "websocket.close", "code": 1008, "reason": IDLE_REASON})
                return
            if op in (Opcode.TEXT, Opcode.BINARY):
                message, text = bytearray(), op is Opcode.TEXT
            if op in _DATA:
                message += frame.data
                if frame.fin:
                    payload, message = bytes(message), bytearray()
                    msg = {"type": "websocket.send", "text": payload.decode()} if text else {
                        "type": "websocket.send", "bytes": payload}  # fmt: skip
                    await send(msg)
            elif op is Opcode.CLOSE:
                close = Close.parse(frame.data) if frame.data else None
                await up.flush()
                code = close.code if close is not None and close.code not in (1005, 1006) else 1000
                await send({"type": "websocket.close", "code": code, "reason": close.reason if close else ""})
                return
        await up.flush()  # pongs, the closing handshake (a 1009 for a message over max_size)
        if isinstance(up.proto.parser_exc, PayloadTooBig):
            await send({"type": "websocket.close", "code": 1009, "reason": "message too big"})
            return
        if not data:
            # The sandbox's server went away without a closing handshake: 1006 cannot be sent.
            await send({"type": "websocket.close", "code": 1001 if up.proto.close_rcvd is None else 1000})
            return
        data = await up.stream.read(FEED)
        if data:
            up.proto.receive_data(data)
        else:
            up.proto.receive_eof()
        events = up.proto.events_received()


def subprotocols_of(scope: Scope) -> list[str]:
    return [str(p) for p in scope.get("subprotocols") or []][:16]
