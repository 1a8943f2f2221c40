"""Terminals: one WebSocket session (``/v1/sandboxes/{id}/pty``, or the dashboard's terminal)
relayed to the agent's ``PtyStream`` (docs/networking.md §2).

The protocol is written against a :class:`PtyPeer` (receive a text or binary frame, send
bytes, send JSON, and the transport's error frame), so the API route and the dashboard's route
stay thin and share every rule here. The first client frame is text JSON ``start`` or
``connect``; then binary frames are input and text frames are ``resize``/``signal``. The server
sends ``started``, output as binary frames, ``exit``, or ``error`` and closes. A bad client frame
is an ``error`` and the end of this connection, never of the terminal (``connect`` again).

For the dashboard: ``target = await pty.prepare(engine, pool, ctx, sandbox_id)`` before accepting
the WebSocket (its errors are the HTTP denial), then ``await pty.session(engine, target, peer)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import sandbox_access, transfer_turns
from warren.cp.services.context import AuthContext
from warren.cp.services.env import validate_env
from warren.cp.services.exec import check_user, parse_signal
from warren.cp.services.exec_stream import OUTPUT_ACK_BYTES, detach_reporter, duplex
from warren.cp.services.stream_pace import FramePace
from warren.cp.services.strict import check_text, json_object, optional_text
from warren.errors import InvalidRequest, PayloadTooLarge, WarrenError
from warren.rpc import hostagent_pb2 as pb

MAX_INPUT_FRAME = 64 << 10  # one binary input frame (a paste larger than this is split by clients)
MAX_CONTROL_FRAME = 256 << 10  # one text frame (a start frame's env included)
MAX_DIM = 1000  # columns and rows
_INPUT_QUEUE = 8  # client messages queued for the agent per session (then TCP pushes back)
# Input bytes queued or sent and not yet written to the guest (the agent acknowledges them,
# PtyStart.credit), or one frame when that is larger: past it the session stops reading its
# WebSocket. Without it gRPC's flow-control window buffers MiBs a terminal that is not reading.
_INPUT_WINDOW = 128 << 10

Frame = dict[str, Any]


@dataclass
class PtyPeer:
    """The client end of one terminal session, as the transport hands it over."""

    recv: Callable[[], Awaitable[str | bytes | None]]  # None: the client went away
    send_bytes: Callable[[bytes], Awaitable[None]]
    send_json: Callable[[Frame], Awaitable[None]]
    error_frame: Callable[[BaseException], Frame]  # an error as the ``error`` frame to send

    async def error(self, exc: BaseException) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.send_json(self.error_frame(exc))


@dataclass(frozen=True)
class Terminal(sandbox_access.Target):
    """The sandbox a terminal runs in, and whose turns its messages take (services/transfer_turns.py)."""

    account: str = ""


async def prepare(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str) -> Terminal:
    """The caller's running sandbox with a reachable host (400/404/409/503 otherwise): called
    before the WebSocket is accepted, so these are plain HTTP answers."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    tgt.client()  # the host's 503 now, not after the upgrade
    fields = {f.name: getattr(tgt, f.name) for f in dataclasses.fields(tgt)}
    return Terminal(**fields, account=transfer_turns.account_key(ctx.team_id, ctx.owner_id))


# ------------------------------------------------------------------------------ frames


def _int(f: Frame, key: str, lo: int, hi: int) -> int:
    v = f.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidRequest(f"{key} must be an integer in {lo}..{hi}")
    return v


def _size(f: Frame) -> pb.PtySize:
    return pb.PtySize(cols=_int(f, "cols", 1, MAX_DIM), rows=_int(f, "rows", 1, MAX_DIM))


def _control(raw: str | bytes) -> Frame:
    """A text frame as a JSON object (bounded), or a 400."""
    if isinstance(raw, bytes):
        raise InvalidRequest("control messages are text frames")
    if len(raw) > MAX_CONTROL_FRAME:
        raise PayloadTooLarge(f"a control frame is at most {MAX_CONTROL_FRAME} bytes")
    return json_object(raw, "a control frame must be JSON", "a control frame must be a JSON object")


def first_request(sid: str, raw: str | bytes) -> pb.PtyRequest:
    """The client's first frame (``start`` or ``connect``) as the agent's first message."""
    f = _control(raw)
    kind = f.get("type")
    if kind == "connect":
        return pb.PtyRequest(
            connect=pb.PtyConnect(
                sandbox_id=sid, pid=_int(f, "pid", 1, (1 << 31) - 1), credit=True, output_credit=True
            )
        )
    if kind != "start":
        raise InvalidRequest("the first frame must be {'type': 'start', ...} or {'type': 'connect', 'pid'}")
    cmd = optional_text(f, "cmd")
    args = f.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise InvalidRequest("args must be a list of strings")
    if args and not cmd:
        raise InvalidRequest("args need a cmd")
    start = pb.PtyStart(
        sandbox_id=sid, size=_size(f), cmd=cmd, args=[check_text(a, "args") for a in args],
        env=validate_env(f.get("env")), cwd=optional_text(f, "cwd"),
        user=check_user(optional_text(f, "user")),
        credit=True, output_credit=True,
    )  # fmt: skip
    return pb.PtyRequest(start=start)


def next_request(raw: str | bytes) -> pb.PtyRequest:
    """A later client frame: binary input, or a ``resize``/``signal`` control frame."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_INPUT_FRAME:
            raise PayloadTooLarge(f"an input frame is at most {MAX_INPUT_FRAME} bytes")
        return pb.PtyRequest(input=raw)
    f = _control(raw)
    kind = f.get("type")
    if kind == "resize":
        return pb.PtyRequest(resize=_size(f))
    if kind == "signal":
        sig = f.get("signal", 15)
        if not isinstance(sig, int | str) or isinstance(sig, bool):
            raise InvalidRequest("signal must be a number or a name")
        return pb.PtyRequest(signal=parse_signal(sig))
    if kind == "input" and isinstance(f.get("data"), str):  # text input, for clients without binary
        return next_request(f["data"].encode())
    raise InvalidRequest(f"unknown frame type {str(kind)[:40]!r} (resize, signal, or binary input)")


# ----------------------------------------------------------------------------- session


async def session(engine: AsyncEngine, target: Terminal, peer: PtyPeer) -> None:
    """One terminal session, from the client's first frame to the exit (or the first error);
    its input handed on in turns of its account (``target.account``)."""
    try:
        try:
            raw = await peer.recv()
        except Exception:
            return
        if raw is None:
            return
        first = first_request(target.sid, raw)
    except WarrenError as e:
        await peer.error(e)
        return
    queue: asyncio.Queue[pb.PtyRequest | None] = asyncio.Queue(maxsize=_INPUT_QUEUE)
    queue.put_nowait(first)
    call = target.client().stub.PtyStream(_drain(queue))
    credit = InputCredit()
    inbound = asyncio.create_task(_inbound(peer, queue, call, credit, target.account))
    outbound = _outbound(call, peer, credit, queue)
    try:
        await duplex(call, outbound, inbound, inbound.done, detach_reporter(peer.error))
    finally:
        sandbox_access.touch_later(engine, target.uuid)


async def _drain(queue: asyncio.Queue[pb.PtyRequest | None]) -> AsyncIterator[pb.PtyRequest]:
    while (item := await queue.get()) is not None:
        yield item


class OutputAcks:
    """Output credit (``PtyStart.output_credit``): the bytes handed on to the client, acknowledged
    to the agent in batches (``exec_stream.OUTPUT_ACK_BYTES``, well under its 256 KiB window) once
    its ``started`` says it keeps to it. Without acknowledgements it sends nothing more, so a
    client that does not read holds its terminal back at the guest instead of filling gRPC's
    window (MiBs a stream) in the CP."""

    def __init__(self) -> None:
        self.on, self._taken = False, 0

    def started(self, ev: pb.PtyEvent) -> None:
        self.on = ev.output_credit

    def taken(self, n: int) -> pb.PtyRequest | None:
        """``n`` more bytes were handed on: the acknowledgement to send now, if one is due."""
        if not self.on:
            return None
        self._taken += n
        if self._taken < OUTPUT_ACK_BYTES:
            return None
        n, self._taken = self._taken, 0
        return pb.PtyRequest(output_acked=n)


class InputCredit:
    """Input bytes held for the agent (queued, or sent and not acknowledged), bounded by
    :data:`_INPUT_WINDOW`; counted until the agent's ``started`` says it acknowledges (an agent
    without credit never does: then nothing is counted)."""

    def __init__(self, window: int = _INPUT_WINDOW) -> None:
        self.window, self.held, self.on = window, 0, True
        self._room = asyncio.Event()

    async def take(self, n: int) -> None:
        while self.on and self.held and self.held + n > self.window:
            self._room.clear()
            await self._room.wait()
        if self.on:
            self.held += n

    def give(self, n: int) -> None:
        self.held = max(0, self.held - n)
        self._room.set()

    def started(self, credit: bool) -> None:
        if not credit:
            self.on = False
            self.give(self.held)


async def _inbound(
    peer: PtyPeer, queue: asyncio.Queue[pb.PtyRequest | None], call: Any, credit: InputCredit, account: str
) -> None:
    """Client frames → the agent, until the client goes or sends a bad frame (reported), each
    handed on in a turn of ``account`` (services/transfer_turns.py). Control frames (resizes,
    signals) have a budget (services/stream_pace.py): a flood of resizes kept the CP and the
    agent a core each busy for as long as the terminal lived."""
    pace = FramePace()
    try:
        while True:
            try:
                raw = await peer.recv()
            except Exception:
                raw = None
            if raw is None:
                break
            try:
                req = next_request(raw)
                if not req.input:
                    pace.take()
            except WarrenError as e:
                await peer.error(e)
                break
            async with transfer_turns.turn(account, "input"):  # held while the agent has no room
                await credit.take(len(req.input))
                await queue.put(req)
    finally:
        call.cancel()


async def _outbound(
    call: Any, peer: PtyPeer, credit: InputCredit, queue: asyncio.Queue[pb.PtyRequest | None]
) -> None:
    """Agent events → the client, output acknowledged once sent. Raises AgentError when the
    agent call fails."""
    acks = OutputAcks()
    async for ev in call:
        which = ev.WhichOneof("event")
        if which == "output":
            await peer.send_bytes(ev.output)
            if (ack := acks.taken(len(ev.output))) is not None:
                # Behind at most _INPUT_QUEUE input messages: the agent reads its requests at
                # once (exec_credit), whatever the guest takes.
                await queue.put(ack)
        elif which == "input_acked":
            credit.give(ev.input_acked)
        elif which == "started":
            credit.started(ev.credit)
            acks.started(ev)
            await peer.send_json({"type": "started", "pid": ev.started})
        elif which == "exit":
            frame: Frame = {"type": "exit", "exit_code": ev.exit.exit_code}
            if ev.exit.error:
                frame["error"] = ev.exit.error
            await peer.send_json(frame)
            return
