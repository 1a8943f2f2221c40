"""Terminals on the host side: the guest's PTY session (``pty_start``/``pty_connect`` on one
guest connection) and the ``PtyStream`` RPC that relays it to the control plane.

Every frame is bounded: input messages from the CP (:data:`MAX_INPUT`), output frames from the
guest (``guest_wire``'s per-kind caps), sizes (1..:data:`MAX_DIM`). The relay never buffers: a
slow CP makes the guest pause reading the terminal (and detach the connection after its stall
limit), a slow guest makes this side stop reading the CP's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from warren.agent.guest_wire import (
    K_ERROR,
    K_EVENT,
    K_SIGNAL,
    K_STDOUT,
    GuestAddress,
    GuestError,
    GuestStream,
    error_from,
    exit_of,
    jdump,
    json_object,
    open_started,
)
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb

if TYPE_CHECKING:
    from warren.agent.guest_client import GuestClient
    from warren.agent.manager import SandboxManager

K_RESIZE = 10  # guest PTY session: JSON {"cols", "rows"} (guest/PROTOCOL.md)
MAX_DIM = 1000  # columns and rows, as the guest checks them
MAX_INPUT = 1 << 20  # one input message; the CP sends at most 64 KiB
MAX_CMD_FIELD = 64 << 10  # cmd, each arg, cwd
# The guest connection's reader buffer: asyncio reads the socket until it holds twice this, so
# the default (1 MiB, sized for file reads) held 2 MiB of output a terminal whose client is not
# reading (64 terminals: +200 MiB on the agent); the guest holds the terminal back instead.
READ_AHEAD = 64 << 10


@dataclass
class PtyEvent:
    kind: str  # "output" | "exit" | "error"
    data: bytes = b""
    exit_code: int = 0
    error: str = ""


def check_size(cols: int, rows: int) -> tuple[int, int]:
    if not (1 <= cols <= MAX_DIM and 1 <= rows <= MAX_DIM):
        raise InvalidRequest(f"cols and rows must be in 1..{MAX_DIM} (got {cols}x{rows})")
    return cols, rows


class PtySession(GuestStream):
    """One guest connection attached to a terminal: iterate for output/exit, send input,
    resizes and signals. Closing it detaches; the terminal lives on."""

    @classmethod
    async def open(cls, socket_path: GuestAddress, req: dict[str, Any]) -> PtySession:
        return cls(*await open_started(socket_path, req, limit=READ_AHEAD))

    def __aiter__(self) -> PtySession:
        return self

    async def __anext__(self) -> PtyEvent:
        if isinstance(got := await self._next_frame(), GuestError):
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
        self._conn.writer.transport.abort()


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
    guest's unary terminal ops (``not_found`` once it exited)."""
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
    if first.WhichOneof("msg") == "start":
        req = start_request(first.start, user, cwd)
    else:
        if first.connect.pid <= 0:
            raise InvalidRequest("connect needs a positive pid")
        req = {"op": "pty_connect", "pid": first.connect.pid}
    session = await PtySession.open(m.guest(sid).socket_path, req)
    failed: list[str] = []
    # Credit (PtyStart.credit): input written to the guest is acknowledged, and the CP sends
    # only a window of it ahead, so what the guest is not taking is not buffered by gRPC here.
    acks: asyncio.Queue[int] | None = asyncio.Queue() if first.start.credit or first.connect.credit else None
    pump = asyncio.create_task(_pump_input(m, sid, requests, session, failed, acks))
    try:
        with m.in_use(sid):
            yield pb.PtyEvent(started=session.pid, credit=acks is not None)
            async with contextlib.aclosing(_with_acks(session, acks)) as events:
                async for ev in events:
                    if isinstance(ev, int):
                        yield pb.PtyEvent(input_acked=ev)
                        continue
                    if ev.kind == "output":
                        yield pb.PtyEvent(output=ev.data)
                        continue
                    if ev.kind == "exit":
                        yield pb.PtyEvent(exit=pb.ExecEvent.Exit(exit_code=ev.exit_code, error=ev.error))
                        break
                    # The guest connection broke, or a bad input message ended it.
                    if failed:
                        raise InvalidRequest(failed[0])
                    raise GuestError("unavailable", ev.error)
    finally:
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
        await session.close()


async def _with_acks(
    session: PtySession, acks: asyncio.Queue[int] | None
) -> AsyncGenerator[PtyEvent | int, None]:
    """The session's events, and the input acknowledgements (``int``) as they come."""
    if acks is None:
        async for ev in session:
            yield ev
        return
    nxt, ack = asyncio.ensure_future(anext(session)), asyncio.ensure_future(acks.get())
    try:
        while True:
            done, _ = await asyncio.wait({nxt, ack}, return_when=asyncio.FIRST_COMPLETED)
            if ack in done:
                yield ack.result()
                ack = asyncio.ensure_future(acks.get())
            if nxt in done:
                try:
                    ev = nxt.result()
                except StopAsyncIteration:
                    return
                yield ev
                nxt = asyncio.ensure_future(anext(session))
    finally:
        for f in (nxt, ack):
            f.cancel()


async def _pump_input(
    m: SandboxManager,
    sid: str,
    requests: AsyncIterator[pb.PtyRequest],
    session: PtySession,
    failed: list[str],
    acks: asyncio.Queue[int] | None = None,
) -> None:
    """CP messages → the guest session. A bad one ends the session (the call fails with it)."""
    try:
        async for msg in requests:
            which = msg.WhichOneof("msg")
            if which == "input":
                if len(msg.input) > MAX_INPUT:
                    raise InvalidRequest(f"an input message is at most {MAX_INPUT} bytes")
                await session.send_input(msg.input)
                if acks is not None:
                    acks.put_nowait(len(msg.input))
            elif which == "resize":
                await session.resize(msg.resize.cols, msg.resize.rows)
            elif which == "signal":
                await session.signal(msg.signal)
            else:
                raise InvalidRequest(f"unexpected PtyStream message {which!r} after the first")
            m.touch(sid)
    except InvalidRequest as e:
        failed.append(e.message)
        session.abort()
