"""Terminals on the host side: the guest's PTY session (``pty_start``/``pty_connect`` on one
guest connection) and the ``PtyStream`` RPC that relays it to the control plane.

Every frame is bounded: input messages from the CP (:data:`MAX_INPUT`), output frames from the
guest (``guest_wire``'s per-kind caps), sizes (1..:data:`MAX_DIM`). The relay never buffers past
its credit (``exec_credit``: the CP sends a window of input ahead, this side a window of output):
a slow CP makes this side stop reading the guest, which pauses reading the terminal (and
detaches the connection after its stall limit, 10 s); a slow guest holds the CP's input back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from warren.agent.exec_credit import READ_AHEAD, CreditedStream
from warren.agent.guest_wire import (
    K_ERROR,
    K_EVENT,
    K_SIGNAL,
    K_STDOUT,
    GuestAddress,
    GuestError,
    GuestStream,
    Lifeline,
    answers,
    error_from,
    exit_of,
    jdump,
    json_object,
    open_started,
)
from warren.aio import cancel_and_wait
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb

if TYPE_CHECKING:
    from warren.agent.guest_client import GuestClient
    from warren.agent.manager import SandboxManager

K_RESIZE = 10  # guest PTY session: JSON {"cols", "rows"} (guest/PROTOCOL.md)
MAX_DIM = 1000  # columns and rows, as the guest checks them
MAX_INPUT = 1 << 20  # one input message; the CP sends at most 64 KiB
MAX_CMD_FIELD = 64 << 10  # cmd, each arg, cwd
# What the client of a stream the guest detached is told (ABORTED: rpc_errors.GUEST_CODES).
DETACHED = (
    "this connection was detached: it did not read the terminal's output, which the sandbox "
    "holds for lagging clients only up to a bound; the terminal keeps running: connect again "
    "with its pid"
)


@dataclass
class PtyEvent:
    kind: str  # "output" | "exit" | "error" | "detached"
    data: bytes = b""
    exit_code: int = 0
    error: str = ""


def check_size(cols: int, rows: int) -> tuple[int, int]:
    if not (1 <= cols <= MAX_DIM and 1 <= rows <= MAX_DIM):
        raise InvalidRequest(f"cols and rows must be in 1..{MAX_DIM} (got {cols}x{rows})")
    return cols, rows


class PtySession(GuestStream):
    """One guest connection attached to a terminal: iterate for output/exit, send input,
    resizes and signals. Closing it detaches; the terminal lives on.

    ``alive`` (:func:`guest_wire.answers`), asked when the connection broke: if the guest still
    answers, it closed it on purpose, detaching this client (event ``detached``), else it is an
    ``error`` (``GuestStream._detached``, the rule attached processes share)."""

    @classmethod
    async def open(
        cls,
        socket_path: GuestAddress,
        req: dict[str, Any],
        lifeline: Lifeline | None = None,
        alive: Callable[[], Awaitable[bool]] | None = None,
    ) -> PtySession:
        # A credit exec's small reader buffer: the default (1 MiB) held 2 MiB of output a
        # terminal whose client is not reading (64 terminals: +200 MiB on the agent).
        session = cls(*await open_started(socket_path, req, limit=READ_AHEAD, lifeline=lifeline))
        session.alive = alive
        return session

    def __aiter__(self) -> PtySession:
        return self

    async def __anext__(self) -> PtyEvent:
        if isinstance(got := await self._next_frame(), GuestError):
            if await self._detached(got):  # it fell behind (guest lag.py, pty.STALL_LIMIT)
                return PtyEvent("detached", error=got.message)
            return PtyEvent("error", error=got.message)
        kind, payload = got
        if kind == K_STDOUT:
            return PtyEvent("output", data=payload)
        self._finish()
        if kind == K_EVENT:
            try:
                d = json_object(payload)
            except GuestError as e:
                return PtyEvent("error", error=e.message)
            if d.get("type") == "exit" and (ended := exit_of(d)) is not None:
                return PtyEvent("exit", exit_code=ended[0], error=ended[1])
            return PtyEvent("error", error="the guest sent an invalid terminal event")
        if kind == K_ERROR:
            err = error_from(payload)
            return PtyEvent("error", error=f"{err.kind}: {err.message}")
        return PtyEvent("error", error=f"unexpected frame kind {kind}")

    async def send_input(self, data: bytes) -> None:
        if not self._done:
            self._conn.send_data(data)
            await self._conn.drain()

    async def resize(self, cols: int, rows: int) -> None:
        check_size(cols, rows)
        if not self._done:
            self._conn.send(K_RESIZE, jdump({"cols": cols, "rows": rows}))
            await self._conn.drain()

    async def signal(self, sig: int) -> None:
        if not 0 < sig < 65:
            raise InvalidRequest("signal must be in 1..64")
        if not self._done:
            self._conn.send(K_SIGNAL, str(int(sig)).encode())
            await self._conn.drain()

    async def close(self) -> None:
        self._finish()

    def abort(self) -> None:
        """End the session from the input side: the pending read fails and the relay stops."""
        self._conn.abort()


def start_request(st: pb.PtyStart, user: str, cwd: str | None) -> dict[str, Any]:
    """A ``PtyStart`` as the guest's ``pty_start`` request (checked here first)."""
    cols, rows = check_size(st.size.cols, st.size.rows)
    for v in (st.cmd, st.cwd, *st.args):
        if len(v) > MAX_CMD_FIELD or "\0" in v:
            raise InvalidRequest("cmd, args and cwd must be under 64 KiB, without NUL bytes")
    req: dict[str, Any] = {"op": "pty_start", "cols": cols, "rows": rows, "env": dict(st.env)}
    if st.cmd:
        req["cmd"], req["args"] = st.cmd, list(st.args)
    if cwd:
        req["cwd"] = cwd
    if user:
        req["user"] = user
    if st.timeout_sec < 0:
        raise InvalidRequest("timeout_sec must be >= 0")
    if st.timeout_sec:
        req["timeout"] = st.timeout_sec
    return req


# ------------------------------------------------------------------------------ the RPC


async def control(guest: GuestClient, req: pb.PtyControlRequest) -> None:
    """``PtyControl``: one input, resize or signal to the terminal ``req.pid`` through the
    guest's unary terminal ops (``not_found`` once it is gone; input to one that exited is the
    guest's ``exited``: INVALID_ARGUMENT, its kind sent as data, ``rpc_errors.abort``)."""
    if req.pid <= 0:
        raise InvalidRequest("a terminal is selected by a positive pid")
    which = req.WhichOneof("msg")
    if which == "input":
        if len(req.input) > MAX_INPUT:
            raise InvalidRequest(f"an input message is at most {MAX_INPUT} bytes")
        await guest.pty_input(req.pid, req.input)
    elif which == "resize":
        await guest.pty_resize(req.pid, *check_size(req.resize.cols, req.resize.rows))
    elif which == "signal":
        if not 0 < req.signal < 65:
            raise InvalidRequest("signal must be in 1..64")
        await guest.pty_signal(req.pid, req.signal)
    else:
        raise InvalidRequest("PtyControl needs input, resize or signal")


def sandbox_of(first: pb.PtyRequest | None) -> str:
    """The sandbox a ``PtyStream``'s first message names (it must be ``start`` or ``connect``)."""
    which = first.WhichOneof("msg") if first is not None else None
    if first is None or which not in ("start", "connect"):
        raise InvalidRequest("the first PtyStream message must be `start` or `connect`")
    return first.start.sandbox_id if which == "start" else first.connect.sandbox_id


async def pty_stream(
    m: SandboxManager,
    first: pb.PtyRequest,
    requests: AsyncIterator[pb.PtyRequest],
    *,
    user: str,
    cwd: str | None,
) -> AsyncGenerator[pb.PtyEvent, None]:
    """The body of ``PtyStream`` after its first message (``start`` or ``connect``): the pid,
    then output until the terminal exits (or this client goes)."""
    sid = sandbox_of(first)
    opts: pb.PtyStart | pb.PtyConnect
    if first.WhichOneof("msg") == "start":
        req, opts = start_request(first.start, user, cwd), first.start
    else:
        if first.connect.pid <= 0:
            raise InvalidRequest("connect needs a positive pid")
        req, opts = {"op": "pty_connect", "pid": first.connect.pid}, first.connect
    guest = await m.ready_guest(sid)
    session = await PtySession.open(guest.socket_path, req, guest.lifeline, answers(lambda: m.guest(sid)))
    # Credit (exec_credit): input written to the guest is acknowledged, and the CP sends only a
    # window of it ahead, so what the guest is not taking is not buffered by gRPC here; with
    # output credit too, this side sends only a window of output past what the CP handed on.
    output = opts.credit and opts.output_credit
    try:
        with m.in_use(sid):
            yield pb.PtyEvent(started=session.pid, credit=opts.credit, output_credit=output)
            if opts.credit:
                credited = CreditedPty(session, lambda: m.touch(sid), output=output)
                async for ev in credited.events(requests):
                    yield ev
            else:
                async for ev in _plain(m, sid, session, requests):
                    yield ev
    finally:
        await session.close()


def _event(ev: PtyEvent, failed: list[str]) -> pb.PtyEvent:
    """A session's event as the RPC's; an error ends the stream (raised)."""
    if ev.kind == "output":
        return pb.PtyEvent(output=ev.data)
    if ev.kind == "exit":
        return pb.PtyEvent(exit=pb.ExecEvent.Exit(exit_code=ev.exit_code, error=ev.error))
    # The guest connection broke, or a bad input message ended it.
    if failed:
        raise InvalidRequest(failed[0])
    if ev.kind == "detached":
        raise GuestError("detached", DETACHED)
    raise GuestError("unavailable", ev.error)


async def _write(session: PtySession, msg: pb.PtyRequest, failed: list[str]) -> int:
    """One CP message to the guest session: the input bytes written. A bad one ends the session
    (the call fails with it: :func:`_event`) and is raised."""
    try:
        which = msg.WhichOneof("msg")
        if which == "input":
            if len(msg.input) > MAX_INPUT:
                raise InvalidRequest(f"an input message is at most {MAX_INPUT} bytes")
            await session.send_input(msg.input)
            return len(msg.input)
        if which == "resize":
            await session.resize(msg.resize.cols, msg.resize.rows)
        elif which == "signal":
            await session.signal(msg.signal)
        else:
            raise InvalidRequest(f"unexpected PtyStream message {which!r} after the first")
        return 0
    except InvalidRequest as e:
        failed.append(e.message)
        session.abort()
        raise


class CreditedPty(CreditedStream[pb.PtyRequest, pb.PtyEvent]):
    """A ``PtyStream`` with credit: each input message is acknowledged once written (the CP's
    window, 128 KiB, holds two of its largest frames, 64 KiB)."""

    input_ack_bytes = 1

    def __init__(self, session: PtySession, touch: Callable[[], None], *, output: bool) -> None:
        super().__init__(session, touch, output=output)
        self.session = session
        self.failed: list[str] = []

    def convert(self, ev: PtyEvent) -> pb.PtyEvent:
        return _event(ev, self.failed)

    def output_bytes(self, ev: pb.PtyEvent) -> int:
        return len(ev.output)

    async def write(self, msg: pb.PtyRequest) -> int:
        return await _write(self.session, msg, self.failed)

    def input_acked(self, n: int) -> pb.PtyEvent:
        return pb.PtyEvent(input_acked=n)


async def _plain(
    m: SandboxManager, sid: str, session: PtySession, requests: AsyncIterator[pb.PtyRequest]
) -> AsyncGenerator[pb.PtyEvent, None]:
    """Without credit (a CP before it): the CP's messages written as they come, each drained
    before the next is read; output as the guest sends it."""
    failed: list[str] = []

    async def pump() -> None:
        with contextlib.suppress(InvalidRequest):
            async for msg in requests:
                await _write(session, msg, failed)
                m.touch(sid)

    task = asyncio.create_task(pump())
    try:
        async for ev in session:
            yield (out := _event(ev, failed))
            if out.HasField("exit"):
                return
    finally:
        await cancel_and_wait(task)
