"""The exec stream (the WebSocket behind ``/v1/sandboxes/{id}/exec/stream``): one session
relays an agent ``ExecStream`` (or ``AttachProcess``) to a client as JSON frames, and the
client's stdin, signals and ``stop`` back.

The protocol is written against a :class:`Peer`: two plain callables (``recv``/``send`` of JSON
frames) and the transport's ``error_frame`` (the API layer's, which knows each error's HTTP
status), so the WebSocket handler stays thin and the protocol can be tested without a socket.

Frames to the client: ``start{pid}``, ``stdout``/``stderr`` with ``data`` (text) or ``data_b64``
(when the bytes are not UTF-8), ``exit{exit_code, error?, reason?}``, ``error{data, code,
status}``. Frames from the client: ``start`` or ``attach`` first, then ``stdin{data | data_b64}``,
``close_stdin``, ``signal{signal}`` and ``stop``. A ``start`` frame may carry ``stdin`` (text) or
``stdin_b64`` and ``close_stdin: true``, applied right after the process starts.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.aio import cancel_and_wait
from warren.cp.hosts.client_pool import DEFAULT_TIMEOUT_S, HostClient
from warren.cp.services import sandbox_access, transfer_turns
from warren.cp.services.env import validate_env
from warren.cp.services.exec import after_start, check_timeout, check_user, decode_b64, parse_signal
from warren.cp.services.stream_pace import REFUSED_COST, FramePace
from warren.cp.services.strict import check_text, optional_text
from warren.errors import AgentError, Conflict, InvalidRequest, TooManyRequests, WarrenError
from warren.rpc import hostagent_pb2 as pb

Frame = dict[str, Any]
Recv = Callable[[], Awaitable[Frame | None]]
Send = Callable[[Frame], Awaitable[None]]
# Stdin bytes per stream queued for the agent or sent and not yet written to the guest (the
# agent acknowledges them, ExecStart.credit; the start frame's own stdin included), or one
# message when that is larger: past it the stream stops reading its WebSocket until the agent
# writes some (backpressure over TCP to the client). Counting what is in flight bounds what gRPC
# buffers for a command that does not read (its flow-control window grows to ~4.5 MiB a stream).
STDIN_QUEUE_BYTES = 256 << 10
# Output bytes handed on to the client before the agent is told (ExecStreamRequest.output_acked):
# well under the agent's window (exec_credit.OUTPUT_WINDOW, 256 KiB), so it never waits on it.
OUTPUT_ACK_BYTES = 32 << 10
# Stdin goes to the agent in messages of at most this many bytes: gRPC lets a receiver buffer a
# whole message whatever its flow-control window, so large messages would be held by the agent
# (and in flight from the CP) for a command that does not read them.
STDIN_PIECE = 64 << 10
# Requests queued for the agent at most (stdin pieces, signals, close_stdin), whatever their
# bytes: past it the stream stops reading its WebSocket until gRPC has sent some.
QUEUED_REQUESTS = 64
FIRST_FRAME_ERROR = "first message must be type 'start' with a 'cmd' field"
# Handles one client frame after the first; False ends the session.
OnFrame = Callable[[Frame], Awaitable[bool]]


@dataclass
class Peer:
    """The client end of one stream session, as the transport hands it over."""

    recv: Recv
    send: Send
    error_frame: Callable[[BaseException], Frame]  # an error as the ``error`` frame to send

    async def error(self, exc: BaseException, **extra: Any) -> None:
        await self.send(self.error_frame(exc) | extra)

    async def error_quietly(self, exc: BaseException) -> None:
        """The error frame, unless the client is gone already."""
        with contextlib.suppress(Exception):
            await self.error(exc)


# ----------------------------------------------------------------------------------- encoding


class OutputEncoder:
    """Turns one output stream's chunks into frames: ``data`` text when the bytes are UTF-8,
    ``data_b64`` when not. A multi-byte character split across two chunks is held back until
    its end arrives, so valid UTF-8 never turns into base64 just because of where a read ended."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._pending = b""

    def feed(self, data: bytes) -> Frame | None:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        try:
            return {"type": self.kind, "data": buf.decode("utf-8")}
        except UnicodeDecodeError as e:
            # An incomplete sequence at the very end (at most 3 bytes) may finish next time.
            if e.end == len(buf) and len(buf) - e.start <= 3 and _is_utf8_prefix(buf[e.start :]):
                head, self._pending = buf[: e.start], buf[e.start :]
                try:
                    return {"type": self.kind, "data": head.decode("utf-8")} if head else None
                except UnicodeDecodeError:
                    pass
                self._pending = b""
            return {"type": self.kind, "data_b64": base64.b64encode(buf).decode()}

    def flush(self) -> Frame | None:
        if not self._pending:
            return None
        buf, self._pending = self._pending, b""
        return {"type": self.kind, "data_b64": base64.b64encode(buf).decode()}


def _is_utf8_prefix(tail: bytes) -> bool:
    """True when ``tail`` is the start of a well-formed multi-byte UTF-8 sequence."""
    lead = tail[0]
    if 0xC2 <= lead <= 0xDF:
        need = 2
    elif 0xE0 <= lead <= 0xEF:
        need = 3
    elif 0xF0 <= lead <= 0xF4:
        need = 4
    else:
        return False
    return len(tail) < need and all(0x80 <= b <= 0xBF for b in tail[1:])


def exit_frame(ev: pb.ExecEvent.Exit) -> Frame:
    frame: Frame = {"type": "exit", "exit_code": ev.exit_code}
    if ev.error:
        frame["error"] = ev.error
        if "timed out" in ev.error:
            frame["reason"] = "timeout"
    return frame


# ----------------------------------------------------------------------------------- session


async def stream_session(
    engine: AsyncEngine,
    client: HostClient,
    sandbox_uuid: Any,
    sid: str,
    peer: Peer,
    *,
    max_timeout: int,
    account: str = "",
) -> None:
    """Run one exec-stream session: the first client frame decides (``start`` or ``attach``),
    then events flow out and stdin/signals flow in until the process exits or the client stops.
    ``last_active_at`` is updated at the end, detached from the request (5 s budget). Stdin is
    handed on in turns of ``account`` (``transfer_turns.account_key``; "": none)."""
    try:
        first = await peer.recv()
    except Exception:  # a client that went away before saying anything
        return
    try:
        if isinstance(first, dict) and first.get("type") == "start" and isinstance(first.get("cmd"), str):
            if not first["cmd"]:
                await peer.error(InvalidRequest(FIRST_FRAME_ERROR))
                return
            await _run_start(client, sid, first, peer, max_timeout, account)
        elif isinstance(first, dict) and first.get("type") == "attach" and _is_pid(first.get("pid")):
            await _run_attach(client, sid, int(first["pid"]), peer, account)
        else:
            await peer.error(InvalidRequest(FIRST_FRAME_ERROR))
            return
    finally:
        sandbox_access.touch_later(engine, sandbox_uuid)


def _is_pid(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _start_request(sid: str, f: Frame, max_timeout: int) -> pb.ExecStart:
    def strs(v: Any) -> list[str]:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise InvalidRequest("args must be a list of strings")
        return [check_text(a, "args") for a in v]

    env = validate_env(f.get("env"))
    timeout = f.get("timeout_sec") or 0
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidRequest("timeout_sec must be a non-negative integer")
    return pb.ExecStart(
        sandbox_id=sid,
        cmd=check_text(f["cmd"], "cmd"),
        args=strs(f.get("args")),
        env=env,
        cwd=check_text(str(f.get("cwd") or ""), "cwd"),
        timeout_sec=check_timeout(timeout, max_timeout),
        tag=check_text(str(f.get("tag") or ""), "tag"),
        background=bool(f.get("background")),
        user=check_user(optional_text(f, "user")),
        credit=True,
    )


def _stdin_bytes(f: Frame) -> bytes:
    """The frame's stdin as bytes; the frame lets go of its text, so a stream waiting for room
    in its queue holds one copy of the message, not two."""
    data = f.pop("data", None)
    out = check_text(data, "stdin data", nul_ok=True).encode() if isinstance(data, str) else b""
    if isinstance(b64 := f.pop("data_b64", None), str):
        out += decode_b64(b64, "data_b64")
    elif not isinstance(data, str):
        raise InvalidRequest("stdin frame needs data or data_b64")
    return out


class StdinQueue:
    """The requests for the agent of one stream (one producer, one consumer), bounded in stdin
    bytes: :meth:`put` waits while stdin is held (queued, or sent and not acknowledged by the
    agent) and the new request's would take it past ``limit``, or while :data:`QUEUED_REQUESTS`
    wait. ``None`` (:meth:`end`) ends the requests and never waits. Output acknowledgements go
    first, never behind held stdin.

    Until the agent's start event says whether it keeps credit, stdin sent counts as held; an
    agent without it (``credit`` false) never acknowledges, so sent stdin then stops counting."""

    def __init__(self, limit: int = STDIN_QUEUE_BYTES) -> None:
        self.limit = limit
        self.queued = 0  # stdin bytes in ``_items``
        self.in_flight = 0  # stdin bytes sent and not acknowledged
        self.credit = True  # the agent acknowledges (assumed until its start event)
        self._output_taken = 0  # output bytes handed on and not yet acknowledged
        self._items: collections.deque[pb.ExecStreamRequest | None] = collections.deque()
        self._ready, self._room = asyncio.Event(), asyncio.Event()

    def put_nowait(self, req: pb.ExecStreamRequest | None) -> None:
        self._items.append(req)
        if req is not None:
            self.queued += len(req.stdin)
        self._ready.set()

    async def put(self, req: pb.ExecStreamRequest) -> None:
        size = len(req.stdin)
        while len(self._items) >= QUEUED_REQUESTS or (
            (held := self.queued + self.in_flight) and held + size > self.limit
        ):
            self._room.clear()
            await self._room.wait()
        self.put_nowait(req)

    def end(self) -> None:
        self.put_nowait(None)

    def started(self, credit: bool) -> None:
        """The agent's start event: whether it acknowledges stdin and takes output acks."""
        self.credit = credit
        if not credit:
            self.acked(self.in_flight)

    def acked(self, n: int) -> None:
        """The agent wrote ``n`` more stdin bytes to the guest."""
        self.in_flight = max(0, self.in_flight - n)
        self._room.set()

    def output_taken(self, n: int) -> None:
        """``n`` output bytes were handed on to the client: acknowledged to the agent in
        batches (:data:`OUTPUT_ACK_BYTES`)."""
        if self.credit:
            self._output_taken += n
            if self._output_taken >= OUTPUT_ACK_BYTES:
                self._ready.set()

    async def get(self) -> pb.ExecStreamRequest | None:
        while not self._items and self._output_taken < OUTPUT_ACK_BYTES:
            self._ready.clear()
            await self._ready.wait()
        if self._output_taken >= OUTPUT_ACK_BYTES:
            n, self._output_taken = self._output_taken, 0
            return pb.ExecStreamRequest(output_acked=n)
        req = self._items.popleft()
        if req is not None:
            self.queued -= len(req.stdin)
            if self.credit:
                self.in_flight += len(req.stdin)
            self._room.set()
        return req


def _start_queue(sid: str, first: Frame, max_timeout: int) -> StdinQueue:
    """The requests for the agent, beginning with the start itself. Stdin given with the start
    frame (and closing it) travels with the start, so a process that exits at once never races
    a client still sending its input. Bounded in bytes: a client pushing stdin at a command that
    does not read it waits here (and the WebSocket, unread, pushes back on it over TCP) instead
    of growing the CP's memory; the agent and the guest hold back the same way."""
    start = _start_request(sid, first, max_timeout)
    queue = StdinQueue()
    queue.put_nowait(pb.ExecStreamRequest(start=start))
    if first.get("stdin") is not None or first.get("stdin_b64") is not None:
        data = _stdin_bytes({"data": first.get("stdin"), "data_b64": first.get("stdin_b64")})
        queue.put_nowait(pb.ExecStreamRequest(stdin=data))
    if first.get("close_stdin"):
        queue.put_nowait(pb.ExecStreamRequest(close_stdin=True))
    return queue


async def _drain(queue: StdinQueue, started: asyncio.Event) -> AsyncIterator[pb.ExecStreamRequest]:
    first = True
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item
        if first:
            first = False
            await after_start(started)


async def _run_start(
    client: HostClient, sid: str, first: Frame, peer: Peer, max_timeout: int, account: str
) -> None:
    try:
        queue = _start_queue(sid, first, max_timeout)
    except InvalidRequest as e:
        await peer.error(e)
        return
    # No deadline: stream exec runs as long as the process (its own timeout_sec aside).
    started = asyncio.Event()
    call = client.stub.ExecStream(_drain(queue, started))

    async def on_frame(f: Frame) -> bool:
        kind = f.get("type")
        if kind == "stdin":
            data = memoryview(_stdin_bytes(f))
            for i in range(0, len(data), STDIN_PIECE):  # small messages: see STDIN_PIECE
                async with transfer_turns.turn(account, "input"):
                    await queue.put(pb.ExecStreamRequest(stdin=bytes(data[i : i + STDIN_PIECE])))
        elif kind == "close_stdin":
            await queue.put(pb.ExecStreamRequest(close_stdin=True))
        elif kind == "signal":
            await queue.put(pb.ExecStreamRequest(signal=parse_signal(f.get("signal", 15))))
        else:
            raise InvalidRequest(f"unknown frame type {kind!r}")
        return True

    try:
        await _pump(call, peer, on_frame, started, queue)
    finally:
        queue.end()


async def _run_attach(client: HostClient, sid: str, pid: int, peer: Peer, account: str) -> None:
    sel = pb.ProcessSelector(pid=pid)
    call = client.stub.AttachProcess(pb.AttachProcessRequest(sandbox_id=sid, process=sel))

    async def on_frame(f: Frame) -> bool:
        kind = f.get("type")
        if kind == "stdin":
            req = pb.SendStdinRequest(sandbox_id=sid, process=sel, data=_stdin_bytes(f))
            async with transfer_turns.turn(account, "input"):
                await client.stub.SendStdin(req, timeout=DEFAULT_TIMEOUT_S)
        elif kind == "close_stdin":
            req_close = pb.CloseStdinRequest(sandbox_id=sid, process=sel)
            await client.stub.CloseStdin(req_close, timeout=DEFAULT_TIMEOUT_S)
        elif kind == "signal":
            sig = parse_signal(f.get("signal", 15))
            req_sig = pb.SignalProcessRequest(sandbox_id=sid, process=sel, signal=sig)
            await client.stub.SignalProcess(req_sig, timeout=DEFAULT_TIMEOUT_S)
        else:
            raise InvalidRequest(f"unknown frame type {kind!r}")
        return True

    await _pump(call, peer, on_frame)


class Detached(Conflict):
    """The guest detached this client (a terminal's, an attach, or the start of a background
    process) for not reading the output (the agent's ``ABORTED``, gRPC's 409): this connection
    ends, the terminal or process runs on (``connect``/``attach`` again with its pid)."""

    code = "detached"


def detach_reporter(
    error: Callable[[BaseException], Awaitable[None]],
) -> Callable[[AgentError], Awaitable[None]]:
    """How the agent's error reaches a stream's client (``error``: its peer's): ``ABORTED`` is
    the guest detaching a client that did not read (agent/guest_wire.py), not a host failure."""

    async def report(e: AgentError) -> None:
        await error(Detached(e.message) if e.rpc_code == "ABORTED" else e)

    return report


# ------------------------------------------------------------------------------------ relay


async def _pump(
    call: Any,
    peer: Peer,
    on_frame: OnFrame,
    started: asyncio.Event | None = None,
    flow: StdinQueue | None = None,
) -> None:
    """Run the output side and the input side together until the process ends, the client says
    ``stop``, or either side fails. ``on_frame`` handles one client frame; False means stop.
    ``started`` is set once the agent's first event arrived; ``flow`` is told the agent's credit
    events and the output handed on. The agent's error goes to the client (``ABORTED``: the
    guest detached it, :class:`Detached`)."""
    stopped = asyncio.Event()
    in_task = asyncio.create_task(_inbound(call, peer, on_frame, stopped))
    outbound = _forward_events(call, peer.send, started, flow)
    await duplex(call, outbound, in_task, stopped.is_set, detach_reporter(peer.error_quietly))


async def duplex(
    call: Any,
    outbound: Awaitable[None],
    inbound: asyncio.Task[None],
    client_ended: Callable[[], bool],
    report: Callable[[AgentError], Awaitable[None]],
) -> None:
    """A stream's two sides, for exec streams and terminals alike: ``outbound`` (the agent's
    events to the client) is awaited while ``inbound`` (the client's frames to the agent) runs
    beside it. Once the client has ended the stream (``client_ended``) the agent call was
    cancelled on its behalf, so the agent's error or a cancellation that follows is that answer:
    dropped. Before, an agent error goes to the client (``report``) and a cancellation goes on.
    Either way the inbound side is stopped and the agent call cancelled."""
    try:
        await outbound
    except AgentError as e:
        if not client_ended():
            await report(e)
    except asyncio.CancelledError:
        if not client_ended():
            raise
    finally:
        await cancel_and_wait(inbound)
        call.cancel()


async def _inbound(call: Any, peer: Peer, on_frame: OnFrame, stopped: asyncio.Event) -> None:
    """Client frames until ``stop`` (or the client goes): then the agent call is cancelled.
    Frames that are not stdin, and refused ones, have a budget (services/stream_pace.py): past
    it the stream ends with that error."""
    pace = FramePace()
    while True:
        try:
            f = await peer.recv()
        except Exception:
            f = None
        if f is None or f.get("type") == "stop":
            break
        try:
            if f.get("type") != "stdin":
                pace.take()
            try:
                if not await on_frame(f):
                    break
            except WarrenError as e:
                # A bad client frame is reported but does not end the process.
                await peer.error(e, fatal=False)
                pace.take(REFUSED_COST)
        except TooManyRequests as e:
            await peer.error_quietly(e)
            break
    stopped.set()
    call.cancel()


async def _forward_events(
    call: Any, send: Send, started: asyncio.Event | None = None, flow: StdinQueue | None = None
) -> None:
    """Agent events → client frames. Raises AgentError when the agent stream fails."""
    out, err = OutputEncoder("stdout"), OutputEncoder("stderr")
    async for ev in call:
        if started is not None:
            started.set()
        which = ev.WhichOneof("event")
        frame: Frame | None
        if which == "stdin_acked":
            if flow is not None:
                flow.acked(ev.stdin_acked)
            continue
        if which in ("stdout", "stderr"):
            frame = (out if which == "stdout" else err).feed(ev.stdout or ev.stderr)
            if frame is not None:
                await send(frame)
            if flow is not None:  # handed on (the WebSocket's send waits while its buffer is full)
                flow.output_taken(len(ev.stdout) + len(ev.stderr))
            continue
        if which == "start":
            if flow is not None:
                flow.started(ev.start.credit)
            frame = {"type": "start", "pid": ev.start.pid}
        elif which == "exit":
            for tail in (out.flush(), err.flush()):
                if tail:
                    await send(tail)
            await send(exit_frame(ev.exit))
            return
        else:
            frame = None
        if frame is not None:
            await send(frame)
    raise AgentError("the agent ended the stream without an exit event", rpc_code="INTERNAL")
