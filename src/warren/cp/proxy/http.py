"""HTTP/1.1 to a sandbox port: h11 on byte streams (``data.py``: the agent's data port, or
DialPort), with idle connections kept per (sandbox, port) for keep-alive.

Bodies stream both ways and are never held whole: the request body is read from ASGI as the
upstream takes it, and each response chunk is sent on once the client's connection took the
previous one. The two go at once (a server may answer before it has read the body: session 17).
A client that goes away cancels the upstream exchange (and its connection).

(h11 directly rather than httpcore's pool: httpcore's per-request bookkeeping — locks, its
async-library detection, which retries a failing import on every request — cost more than the
rest of the proxy's own work; bench/proxy.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import h11
from starlette.types import Receive, Scope, Send

from warren.aio import until_first
from warren.cp.hosts.client_pool import HostClient
from warren.cp.proxy import pace
from warren.cp.proxy.data import open_stream
from warren.cp.proxy.routing import hop_by_hop
from warren.cp.proxy.stream import CHUNK, ByteStream
from warren.errors import AgentError

CONNECT_TIMEOUT_S = 15.0
IDLE_S = 30.0  # an idle upstream connection is dropped after this
MAX_IDLE_PER_PORT = 8
MAX_IDLE = 1024
MAX_HEAD = 64 << 10  # response line and headers from the sandbox
SMALL_BODY = 64 << 10  # a Content-Length body up to this is read whole and sent in one piece
SEND_PIECE = 32 << 10  # the most one write to the client adds (an unread response: session 15)
# Informational (1xx) responses before the final one: this many at once, then one a second
# (a long request's 102 Processing). Each is an event parsed on the CP's loop with nothing sent
# to the client: a sandbox's endless `100 Continue`s kept a CP core busy for as long as its
# client waited (session 22, test_attack_session22_preview_cpu). Past the pace: 502.
MAX_INFORMATIONAL = 16
# Events parsed from a sandbox's server, per connection: EVENTS_BURST at once, then
# EVENTS_PER_S (the parse then waits; the account's connections share a pace too: pace.py),
# and the loop is let go every EVENTS_PER_TURN. Each chunk of a chunked body is an event (~5 us
# of h11): a server's 1-byte chunks, ~5 500 a 32 KiB read, sent on one by one without letting
# the loop go, to a client reading as fast as it could made another team's API calls ~150x
# slower (session 22, test_attack_session22_preview_chunks). A legitimate stream of small
# events (SSE) is paced at worst, never cut; a body in large chunks is an event a read.
# A response head's headers past FREE_HEADERS count as events too: h11 parses them one by one
# (a 64 KiB head of 10 700 one-letter headers cost the CP ~25 ms a response, in one stretch:
# one client asking again at once kept it at 42 % of a core; test_attack_session22_preview_cpu).
FREE_HEADERS = 64
EVENTS_BURST = 4096
EVENTS_PER_S = 4096.0
EVENTS_PER_TURN = 256


class UpstreamError(Exception):
    """The sandbox's server broke the exchange before its response started."""


class ClientGone(Exception):
    """The client went away; nothing more to answer."""


class _Conn:
    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = 0.0
        self.pending: h11.Event | None = None  # parsed by more_data, not yet taken
        self.events, self.turn = pace.Bucket(EVENTS_BURST, EVENTS_PER_S), 0

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.write(data)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        if self.pending is not None:
            taken, self.pending = self.pending, None
            return taken
        await self._pace()
        while True:
            ev = self.h11.next_event()
            if ev is not h11.NEED_DATA:
                self._count()
                return ev  # type: ignore[return-value]
            self.h11.receive_data(await self.stream.read(CHUNK))

    def more_data(self, data: bytes, limit: int) -> bytes:
        """``data`` (a Data event's) and the Data events parsed from what is already read, up
        to ``limit`` bytes or the event budget; the first other event waits for next_event."""
        parts = [data]
        size = len(data)
        while size < limit and self.turn < EVENTS_PER_TURN and pace.left(self.events) >= 1:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA:
                break
            self._count()
            if not isinstance(ev, h11.Data):
                self.pending = ev  # type: ignore[assignment]
                break
            parts.append(bytes(ev.data))
            size += len(ev.data)
        return b"".join(parts)

    def _count(self) -> None:
        pace.take(self.events)
        self.turn += 1

    async def _pace(self) -> None:
        """Lets the loop go every EVENTS_PER_TURN events; a spent budget (the connection's, or
        its account's: pace.py) waits for a turn's worth (its events then go to the client in
        one send, not one each)."""
        while (wait := pace.wait_s(self.events, EVENTS_PER_TURN)) > 0:
            self.turn = 0
            await asyncio.sleep(wait)
        if self.turn >= EVENTS_PER_TURN:
            self.turn = 0
            await asyncio.sleep(0)

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def aclose(self) -> None:
        await self.stream.aclose()


class Upstream:
    """The process's upstream connections (every sandbox, every port)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._n_idle = 0

    async def aclose(self) -> None:
        idle, self._idle, self._n_idle = self._idle, {}, 0
        for conns in idle.values():
            for c in conns:
                await c.aclose()

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            c = conns.pop()
            self._n_idle -= 1
            # Readable while idle: the server closed it (or sent what it should not have).
            if now - c.idle_since < IDLE_S and not c.stream.readable:
                return c
            c.stream.close_nowait()
        self._idle.pop(key, None)
        return None

    def _put(self, key: tuple[str, int], c: _Conn) -> bool:
        conns = self._idle.setdefault(key, [])
        if len(conns) >= MAX_IDLE_PER_PORT or self._n_idle >= MAX_IDLE:
            return False
        c.h11.start_next_cycle()
        c.idle_since = time.monotonic()
        conns.append(c)
        self._n_idle += 1
        return True

    async def forward(
        self,
        client: HostClient,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        sandbox_id: str,
        port: int,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """One request to the sandbox's port and its response back to the client. Errors before
        the response started propagate (the caller answers them); after, the response is cut."""
        key = (sandbox_id, port)
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        if not any(k == b"host" for k, _ in headers):
            headers = [(b"host", b"localhost"), *headers]  # HTTP/1.1 wants one; an HTTP/1.0 client may not
        req = h11.Request(method=scope["method"], target=target, headers=headers)
        if has_body:  # always a fresh connection: a body once consumed cannot be sent again
            fresh = await _connect(client, sandbox_id, port)
            await self._settle(key, fresh, _duplex(fresh, req, receive, send))
            return
        conn = self._take(key)
        if conn is not None:
            try:
                resp = await self._exchange(conn, req, receive)
            except (h11.ProtocolError, ConnectionError, UpstreamError):
                # A kept connection the server dropped meanwhile: once more on a fresh one.
                await conn.aclose()
                conn = None
            except BaseException:
                await conn.aclose()
                raise
        if conn is None:
            conn = await _connect(client, sandbox_id, port)
            try:
                resp = await self._exchange(conn, req, receive)
            except BaseException:
                await conn.aclose()
                raise
        await self._settle(key, conn, _relay(conn, resp, receive, send))

    async def _settle(self, key: tuple[str, int], conn: _Conn, relay: Coroutine[Any, Any, None]) -> None:
        """Runs ``relay``; then ``conn`` is kept for the next request if both messages ended
        cleanly (closed otherwise: a cut response, an unsent rest of a body, an error)."""
        keep = False
        try:
            await relay
            keep = conn.reusable()
        finally:
            if not (keep and self._put(key, conn)):
                await conn.aclose()

    @staticmethod
    async def _exchange(conn: _Conn, req: h11.Request, receive: Receive) -> h11.Response:
        await conn.send(req)
        await conn.send(h11.EndOfMessage())
        return await _head_unless_gone(conn, receive)


async def _connect(client: HostClient, sandbox_id: str, port: int) -> _Conn:
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        return _Conn(await open_stream(client, sandbox_id, port))


async def _duplex(conn: _Conn, req: h11.Request, receive: Receive, send: Send) -> None:
    """A request with a body: the body goes up while the response comes down, each in a task.
    A server may answer before it has read the body (session 16: sent whole first, an upload
    stalled once the answer outgrew the buffers on the way). The request side alone calls
    ``receive``; after the body it waits for the client to leave (ClientGone ends both). A
    response that ends first ends the exchange: the rest of the body is not sent, and the
    connection, not reusable then, is closed by the caller."""
    await conn.send(req)
    up = asyncio.create_task(_send_body(conn, receive))
    down = asyncio.create_task(_answer(conn, send))
    await until_first(up, down)  # (outcomes kept: read below)
    if down.done() and not down.cancelled() and down.exception() is None:
        return
    if up.done() and not up.cancelled() and (e := up.exception()) is not None:
        raise e  # the client left (or sent what cannot be relayed): the response, if any, cut
    e = down.exception() if down.done() and not down.cancelled() else None
    raise e if e is not None else ClientGone


async def _send_body(conn: _Conn, receive: Receive) -> None:
    """The request body to the sandbox as the client sends it, then the wait for the client to
    leave. A write that fails (the server closed or reset its side, the stream ended) stops the
    body: the connection is broken, so the response side ends too, after an answer the server
    may have sent first (a 413, say)."""
    try:
        async for chunk in _body(receive):
            await conn.send(h11.Data(data=chunk))
        await conn.send(h11.EndOfMessage())
    except (ConnectionError, AgentError):
        pass
    await _gone(receive)
    raise ClientGone


async def _answer(conn: _Conn, send: Send) -> None:
    resp = await _head(conn)
    if not await _start(conn, resp, send):
        await _pump(conn, send)


async def _head(conn: _Conn) -> h11.Response:
    allowance, last = float(MAX_INFORMATIONAL), time.monotonic()
    while True:
        ev = await conn.next_event()
        if isinstance(ev, h11.Response | h11.InformationalResponse) and len(ev.headers) > FREE_HEADERS:
            pace.take(conn.events, len(ev.headers) - FREE_HEADERS)
        if isinstance(ev, h11.Response):
            return ev
        if isinstance(ev, h11.InformationalResponse):  # 100 Continue and the like: the final answer follows
            now = time.monotonic()
            allowance, last = min(float(MAX_INFORMATIONAL), allowance + now - last) - 1, now
            if allowance < 0:
                raise UpstreamError("the sandbox's server sent informational responses without end")
            continue
        if isinstance(ev, h11.ConnectionClosed):
            raise UpstreamError("the sandbox's server closed the connection without answering")
        raise UpstreamError(f"unexpected {type(ev).__name__} from the sandbox's server")


async def _gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _head_unless_gone(conn: _Conn, receive: Receive) -> h11.Response:
    """The response head, or ClientGone when the client leaves first: a server that never
    answers (or trickles its head) must not keep the exchange, the agent's dial and one of the
    sandbox's proxy slots after its client has gone. One task watches the client and cancels
    this one while it still waits (a task for the head as well cost ~0.05 ms a request)."""
    me = asyncio.current_task()
    assert me is not None
    state = {"waiting": True, "gone": False}

    async def watch() -> None:
        await _gone(receive)
        if state["waiting"]:  # only while this task is suspended reading the head
            state["gone"] = True
            me.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await _head(conn)
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        me.uncancel()
        raise ClientGone from None
    finally:
        state["waiting"] = False  # no await between the head and here: no cancel can land later
        watcher.cancel()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        if chunk := msg.get("body"):
            yield chunk
        if not msg.get("more_body"):
            return


async def _start(conn: _Conn, resp: h11.Response, send: Send) -> bool:
    """Sends the response's head, and its body when that is small: True if all was sent."""
    drop = hop_by_hop(resp.headers.raw_items())
    out = [(k.lower(), v) for k, v in resp.headers.raw_items() if k.lower() not in drop]
    await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
    # The common small response is already whole in h11's buffer, or a small Content-Length body
    # follows in the next bytes: one send, no tasks (a client that goes away meanwhile is seen
    # at the send, as while waiting for the response head).
    buffered = _buffered_body(conn)
    if buffered is None and (left := _body_left(conn)) is not None and left <= SMALL_BODY:
        buffered = await _read_body(conn)
    if buffered is None:
        return False
    await send({"type": "http.response.body", "body": buffered, "more_body": False})
    return True


async def _pump(conn: _Conn, send: Send) -> None:
    """The rest of the response body, as the client takes it."""
    while True:
        ev = await conn.next_event()
        if isinstance(ev, h11.Data):
            # Each send waits until the client's transport is below its high-water mark
            # (uvicorn's flow control) before it writes: pieces keep what one write adds
            # past that mark small, and nothing is read from the sandbox meanwhile. Small
            # chunks already read go in one send.
            data = conn.more_data(bytes(ev.data), SEND_PIECE)
            for i in range(0, len(data), SEND_PIECE):
                await send(
                    {"type": "http.response.body", "body": bytes(data[i : i + SEND_PIECE]), "more_body": True}
                )
        elif isinstance(ev, h11.EndOfMessage):
            break
        else:
            raise UpstreamError(f"the sandbox's server ended the response early ({type(ev).__name__})")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay(conn: _Conn, resp: h11.Response, receive: Receive, send: Send) -> None:
    """The response to a request without a body, its body pumped beside a task that watches
    for the client to leave."""
    if await _start(conn, resp, send):
        return
    relay, watch = asyncio.create_task(_pump(conn, send)), asyncio.create_task(_gone(receive))
    try:
        await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (relay, watch):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        if relay.done() and not relay.cancelled():
            relay.result()  # an upstream error mid-body: the response is cut
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            raise ClientGone


def _body_left(conn: _Conn) -> int | None:
    """What is left of a Content-Length response body (None: another framing, or none)."""
    if conn.h11.their_state is not h11.SEND_BODY:
        return None
    reader: object = getattr(conn.h11, "_reader", None)
    remaining = getattr(reader, "_remaining", None)
    return remaining if isinstance(remaining, int) else None


def _buffered_body(conn: _Conn) -> bytes | None:
    """The response's whole body when h11 already holds all of it (else None, nothing taken)."""
    remaining = _body_left(conn)
    if remaining is None or len(conn.h11.trailing_data[0]) < remaining:
        return None
    parts = []
    while True:
        ev = conn.h11.next_event()
        if isinstance(ev, h11.Data):
            parts.append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            return b"".join(parts)
        else:  # not expected with the whole body buffered; h11 keeps its state consistent
            raise UpstreamError(f"the sandbox's server sent {type(ev).__name__} in a body")


async def _read_body(conn: _Conn) -> bytes:
    """A small Content-Length body, whole (at most ``SMALL_BODY`` bytes)."""
    parts = []
    while True:
        ev = await conn.next_event()
        if isinstance(ev, h11.Data):
            parts.append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            return b"".join(parts)
        else:
            raise UpstreamError(f"the sandbox's server ended the response early ({type(ev).__name__})")
