"""A file's bytes between the CP and an agent, with flow credit: ``ReadFileCredit`` and
``WriteFileCredit`` (rpc/hostagent.proto; the agent's side is ``agent/exec_credit.py``).

gRPC's flow-control windows grow with its bandwidth probes (MiBs a stream), and they bounded
nothing useful: an admitted download its client did not read held ~5 MiB of the CP and ~3 MiB of
the agent, an upload into a guest that took nothing up to ~17 MiB of the agent. With credit each
direction holds a window:

- download: the agent sends at most 256 KiB past what this side acknowledged, and this side
  acknowledges a chunk once it has handed it on to the client (the ASGI server's ``send``
  returned: the response's write backpressure), in :data:`OUTPUT_ACK_BYTES` batches. The agent
  ends the file with an empty message and the call only once this side has half-closed: a call
  that ends while an acknowledgement is on its way fails here (INTERNAL) with every byte read;
- upload: the agent acknowledges the bytes it has written to the guest, and this side reads no
  more of the client's body than :data:`UPLOAD_WINDOW` past that.

An agent with them sends the call's initial metadata (``warren-file-credit``) before it reads a
message, and this side waits for it before writing one (a round trip); an agent from before
answers ``UNIMPLEMENTED`` instead, and the plain streams (``ReadFileStream``,
``WriteFileStream``) carry the transfer, as they did. An upload also waits for the agent's
``ready`` before it reads the client's body, so a refusal comes before any byte is on its way.

Since session 14 the windows grow with the round trip (rpc/flow_window.py) when the agent says
it takes growing windows (``warren-file-window`` in that metadata): this side grants a
download's window (:class:`~warren.rpc.flow_window.Grower`: doubled when its client took a whole
window while this side waited for the agent's bytes) and keeps to the agent's grants for an
upload as far as its own budget allows (``WARREN_TRANSFER_WINDOW_*``: the largest window, and
what grown windows hold in this process, in all, per team and, since session 16, per owning
account: ``owner``, the team's owner; the platform team has none). Each transfer with growing
windows logs ``event=file_window`` at its end: the window it reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc.aio
from prometheus_client import Counter, Gauge

from warren.aio import cancel_and_wait
from warren.config import get_settings
from warren.cp.hosts.client_pool import HostClient
from warren.cp.services import transfer_turns
from warren.cp.services.exec_stream import OUTPUT_ACK_BYTES
from warren.cp.services.pty import InputCredit
from warren.cp.services.transfer_turns import Turn
from warren.cp.telemetry import REGISTRY
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc.flow_window import BASE, Allowance, Budget, Grower

log = logging.getLogger("warren.files")

CHUNK = 64 * 1024
# Upload bytes sent to the agent and not acknowledged as written to the guest, past which the
# client's body is not read. The agent acknowledges in 128 KiB batches
# (exec_credit.STDIN_ACK_BYTES): this must be at least that plus one CHUNK.
UPLOAD_WINDOW = 256 << 10
# The initial metadata an agent with the credit streams sends first (agent/exec_credit.py's
# FILE_CREDIT_METADATA), and the one with its largest growing window (FILE_WINDOW_KEY).
_CREDIT_KEY = "warren-file-credit"
_WINDOW_KEY = "warren-file-window"
# What a grpc.aio stream's read() returns at the end (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


_budget: Budget | None = None
_T = TypeVar("_T")

# What the windows do in this process (docs/operations.md, "Metrics"): the bytes grown windows
# hold now (the budget in use), the transfers whose window grew, and those whose growth the budget
# cut short (a team's share or the process's budget was spent).
WINDOW_HELD = Gauge(
    "warren_file_transfer_window_held_bytes",
    "Bytes of file transfers' grown flow windows (past 256 KiB each) this replica holds now.",
    registry=REGISTRY,
)
WINDOW_HELD.set_function(lambda: _budget.used if _budget is not None else 0)
WINDOW_GROWN = Counter(
    "warren_file_transfer_windows_grown",
    "File transfers whose flow window grew past 256 KiB, by direction (download, upload).",
    ["direction"],
    registry=REGISTRY,
)
WINDOW_CAPPED = Counter(
    "warren_file_transfer_window_capped",
    "File transfers whose window growth the budget cut short (the team's share or the replica's "
    "budget spent), by direction.",
    ["direction"],
    registry=REGISTRY,
)
for _direction in ("download", "upload"):
    WINDOW_GROWN.labels(_direction)
    WINDOW_CAPPED.labels(_direction)


def _windows(agent_largest: int) -> tuple[Budget, int]:
    """This process's budget of grown windows, and the largest window for an agent that takes
    up to ``agent_largest`` (its metadata; 0: none, the fixed window)."""
    global _budget
    settings = get_settings()
    if _budget is None:
        mib = 1 << 20
        _budget = Budget(
            settings.transfer_window_budget_mb * mib,
            settings.transfer_window_team_mb * mib,
            settings.transfer_window_owner_mb * mib,
        )
    return _budget, min(settings.transfer_window_max, agent_largest)


def _turn_of(team: str, direction: str) -> Turn:
    """The turn of ``team``'s account (its owner; the team's own for the platform team) for
    one message (services/transfer_turns.py), in this process."""
    return transfer_turns.turn(_owner_of(team) or team, direction)


def share_key(team_id: object, owner_id: object) -> str:
    """Whose shares of the window budget a transfer's grown window takes: its team's, and its
    team's owning account's (``<team>:<owner>``; no owner, as the platform team: the team's only)."""
    return f"{team_id or ''}:{owner_id}" if owner_id else str(team_id or "")


def _owner_of(key: str) -> str:
    return key.partition(":")[2]


async def _credit(call: Any) -> int | None:
    """Whether the agent keeps to credit on this stream-stream ``call``: its initial metadata,
    sent before it reads a message, says so, and the largest window it grows to (0: a fixed
    window). Nothing is written before: a message on its way while an agent from before answers
    UNIMPLEMENTED can turn that into INTERNAL ("Internal error from Core"). None for such an
    agent; any other end of the call is raised."""
    md = await call.initial_metadata()
    if md is not None and _CREDIT_KEY in (got := dict(md)):
        largest = str(got.get(_WINDOW_KEY, ""))
        return int(largest) if largest.isdigit() else 0
    try:
        while await call.read() is not _EOF:  # the call has ended: its status
            pass
        raise AgentError("the agent answered a file stream without credit", rpc_code="INTERNAL")
    except AgentError as e:
        if e.rpc_code != "UNIMPLEMENTED":
            raise
        return None
    finally:
        # Ends grpc.aio's request proxy, which a cancel alone leaves pending (logged at exit).
        with contextlib.suppress(Exception):
            await call.done_writing()


class StreamAborted(Exception):
    """A download broke after its first byte; raised inside the response body on purpose."""


# -------------------------------------------------------------------------------------- write


async def write(
    client: HostClient, sid: str, path: str, chunks: AsyncIterator[bytes], user: str,
    metadata: Mapping[str, str] | None = None, *, team: str = "",
) -> None:  # fmt: skip
    """``chunks`` to ``path`` in the sandbox, whole or not at all: ``meta``, ≤ 64 KiB chunks, then
    ``commit``. If ``chunks`` fails (a truncated or broken upload), the RPC is cancelled so the
    agent discards the partial file. ``metadata``: the new file's ``user.e2b.*`` extended
    attributes (E2B's file metadata, docs/e2b.md §3.2). ``team``: whose shares of this
    process's window budget a grown window takes (:func:`share_key`)."""
    meta = pb.WriteFileStreamRequest(
        meta=pb.WriteFileMeta(
            sandbox_id=sid, path=path, explicit_commit=True, user=user, metadata=metadata or {}
        )
    )
    call = client.stub.WriteFileCredit(None, timeout=None)  # None: requests go by call.write()
    try:
        if (agent_largest := await _credit(call)) is None:
            call.cancel()
            await _plain_upload(client, meta, chunks)
            return
        budget, largest = _windows(agent_largest)
        meta.meta.window_max = largest if largest > BASE else 0
        meta.meta.stops_on_refusal = True
        await _send_credited(call, meta)
        # Nothing of ``chunks`` is read before the agent's answer: a refusal (no such sandbox or
        # user) comes before any of the body is on its way.
        first: Any = await call.read()
        if first is _EOF or first.WhichOneof("msg") != "ready":
            raise AgentError("the agent did not start the upload", rpc_code="INTERNAL")
        window = Allowance(budget, team, largest, _owner_of(team))
        try:
            await _credited_upload(call, chunks, window, team)
        finally:
            window.close()
            if largest > BASE:
                _log_window("upload", sid, window)
    except BaseException:
        call.cancel()
        raise


class _UploadWindow:
    """An upload's credit, and the window the agent grants it as far as this side allows."""

    def __init__(self, window: Allowance, team: str) -> None:
        self.window = window
        self.team = team  # whose turns its messages take (_turn_of)
        self.credit = InputCredit(UPLOAD_WINDOW)
        self.told = UPLOAD_WINDOW  # the window the agent was last told this side keeps to
        self.writing = False  # a message is on its way to the call
        self.refused = False  # the agent is refusing the upload: no more chunks

    def stop(self) -> None:
        self.refused = True
        self.credit.on = False  # a writer waiting for credit goes on (to stop)
        self.credit.give(0)

    def granted(self, n: int) -> None:
        self.credit.window = _counted("upload", self.window, lambda: self.window.granted(n))
        self.credit.give(0)  # wakes the writer, which may have room now

    def news(self) -> int:
        """The window to tell the agent with the next chunk (0: unchanged)."""
        if self.credit.window == self.told:
            return 0
        self.told = self.credit.window
        return self.told


async def _credited_upload(call: Any, chunks: AsyncIterator[bytes], window: Allowance, team: str) -> None:
    """The upload's chunks, a window ahead of the agent's acknowledgements, to its ``done``."""
    credit = _UploadWindow(window, team)
    writer = asyncio.create_task(_send_chunks(call, chunks, credit))
    reader = asyncio.create_task(_upload_events(call, credit))
    try:
        await asyncio.wait((writer, reader), return_when=asyncio.FIRST_EXCEPTION)
        if writer.done() and (e := writer.exception()) is not None:
            raise e  # the client's body broke (or was too large): the call is cancelled
        if reader.done() and isinstance(reader.exception(), _Refusing):
            await _refused(call, writer, credit)
        await reader  # the agent's `done`, or its error (the writer then waits for nothing)
    finally:
        await cancel_and_wait(writer, reader)


class _Refusing(Exception):
    """The agent said ``refusing``: the guest refused the upload midway."""


async def _refused(call: Any, writer: asyncio.Task[None], credit: _UploadWindow) -> NoReturn:
    """No more chunks (one on its way goes on: the agent drops it), the half-close, then the
    call's status: the guest's refusal. Ended by the agent at once, with a chunk on its way, the
    status here could be INTERNAL ("Internal error from Core"), a 502."""
    credit.stop()
    if credit.writing:
        await asyncio.wait((writer,))
    await cancel_and_wait(writer)  # it waited for the client's body or for credit: nothing sent
    with contextlib.suppress(Exception):
        await call.done_writing()
    while await call.read() is not _EOF:
        pass
    raise AgentError("the agent refused the upload without a status", rpc_code="INTERNAL")


async def _send_chunks(call: Any, chunks: AsyncIterator[bytes], credit: _UploadWindow) -> None:
    try:
        async for data in chunks:
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                piece = bytes(view[i : i + CHUNK])
                await credit.credit.take(len(piece))  # the client's next bytes wait meanwhile
                if credit.refused:
                    return  # _refused half-closes
                msg = pb.WriteFileStreamRequest(chunk=piece, window=credit.news())
                async with _turn_of(credit.team, "upload"):
                    await _send_one(call, msg, credit)
        if credit.refused:
            return
        # Only now is the upload whole: the agent discards a file that ends without this.
        await _send_one(call, pb.WriteFileStreamRequest(commit=True), credit)
        await call.done_writing()
    except asyncio.InvalidStateError:
        pass  # the agent ended the call (it refused the path, say): its status is the answer


async def _send_one(call: Any, msg: pb.WriteFileStreamRequest, credit: _UploadWindow) -> None:
    credit.writing = True
    try:
        await call.write(msg)
    finally:
        credit.writing = False


async def _upload_events(call: Any, credit: _UploadWindow) -> None:
    while (ev := await call.read()) is not _EOF:
        which = ev.WhichOneof("msg")
        if which == "acked":
            if ev.window:
                credit.granted(ev.window)
            credit.credit.give(ev.acked)
        elif which == "done":
            return
        elif which == "refusing":
            raise _Refusing
    raise AgentError("the agent ended the upload without an answer", rpc_code="INTERNAL")


async def _send_credited(call: Any, request: Any) -> None:
    """A request on a stream-stream call; a call the agent has already ended answers its own
    status (an AgentError) rather than InvalidStateError."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        while await call.read() is not _EOF:
            pass
        raise


async def _plain_upload(
    client: HostClient, meta: pb.WriteFileStreamRequest, chunks: AsyncIterator[bytes]
) -> None:
    """WriteFileStream, for an agent without credit: gRPC's flow control pushes back."""
    call = client.stub.WriteFileStream(None, timeout=None)
    try:
        await _send_plain(call, meta)
        async for data in chunks:
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                await _send_plain(call, pb.WriteFileStreamRequest(chunk=bytes(view[i : i + CHUNK])))
        await _send_plain(call, pb.WriteFileStreamRequest(commit=True))
        await call.done_writing()
        await call
    except BaseException:
        call.cancel()
        raise


async def _send_plain(call: Any, request: pb.WriteFileStreamRequest) -> None:
    """One upload message. When the agent has already ended the call (it refused the path, say,
    while the file was still on its way) grpc.aio raises InvalidStateError: the call's own status
    (an AgentError) is the answer, not that."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        await call
        raise


# --------------------------------------------------------------------------------------- read


async def open_read(
    client: HostClient, sid: str, path: str, user: str, *, team: str = ""
) -> AsyncGenerator[bytes]:
    """Open the file's read stream and fetch its first chunk here, so that an error before the
    data flows (no such file, ...) raises before the response starts; then relay the rest.
    ``team``: whose shares of this process's window budget a grown window takes
    (:func:`share_key`)."""
    req = pb.ReadFileRequest(sandbox_id=sid, path=path, user=user)
    call = client.stub.ReadFileCredit(None, timeout=None)
    try:
        if (agent_largest := await _credit(call)) is None:
            call.cancel()
            return await _open_plain_read(client, req)
        budget, largest = _windows(agent_largest)
        await _send_credited(call, pb.ReadFileCreditRequest(open=req))
        first = await call.read()
    except BaseException:
        call.cancel()
        raise
    grower = Grower(budget, team, largest, group=_owner_of(team)) if largest > BASE else None
    return _relay(call, first, sid, path, credit=True, grower=grower, team=team)


async def _open_plain_read(client: HostClient, req: pb.ReadFileRequest) -> AsyncGenerator[bytes]:
    """ReadFileStream, for an agent without credit."""
    call = client.stub.ReadFileStream(req, timeout=None)
    try:
        first = await call.read()
    except BaseException:
        call.cancel()
        raise
    return _relay(call, first, req.sandbox_id, req.path, credit=False)


async def _relay(
    call: Any, first: Any, sid: str, path: str, *, credit: bool, grower: Grower | None = None, team: str = ""
) -> AsyncGenerator[bytes]:
    """The file's chunks as the client takes them, each handed on in a turn of ``team``'s
    account (:func:`_turn_of`); with ``credit``, acknowledged once handed on, and with a
    ``grower`` the window granted with them (it grows while the client takes what comes faster
    than it comes)."""
    try:
        msg, taken = first, 0
        while msg is not _EOF:
            if chunk := msg.chunk:
                if grower is not None and msg.window:
                    grower.sender_keeps(msg.window)
                async with _turn_of(team, "download"):
                    yield chunk
                taken += len(chunk)  # handed on: the response's send returned
                grown = _counted("download", grower, lambda: grower.consumed(len(chunk))) if grower else None
                batch = grower.ack_batch(OUTPUT_ACK_BYTES) if grower is not None else OUTPUT_ACK_BYTES
                if credit and (taken >= batch or grown):
                    await _ack(call, taken, grown or 0)
                    taken = 0
            elif credit:  # the agent's end: it ends the call once this side has half-closed
                with contextlib.suppress(asyncio.InvalidStateError):
                    await call.done_writing()
            try:
                if grower is not None:
                    grower.waiting()
                msg = await call.read()
                if grower is not None:
                    grower.arrived()
            except AgentError as e:
                log.warning("file stream read failed midway sandbox=%s path=%s: %s", sid, path, e)
                # Raising here makes the server abort the response (no final chunk): the client
                # sees a broken transfer, never a silently short file.
                raise StreamAborted(e.message) from e
    finally:
        call.cancel()
        if grower is not None:
            grower.close()
            _log_window("download", sid, grower)


async def _ack(call: Any, n: int, window: int = 0) -> None:
    # The agent may have sent the whole file and ended the call: its last chunks are read on.
    with contextlib.suppress(asyncio.InvalidStateError):
        await call.write(pb.ReadFileCreditRequest(acked=n, window=window))


def _counted(direction: str, window: Grower | Allowance, step: Callable[[], _T]) -> _T:
    """``step`` of ``window``, counted in the metrics as it happens: its first growth, and the
    first growth the budget cut short."""
    peak, capped = window.peak, window.capped
    got = step()
    if peak == BASE < window.peak:
        WINDOW_GROWN.labels(direction).inc()
    if capped == 0 < window.capped:
        WINDOW_CAPPED.labels(direction).inc()
    return got


def _log_window(direction: str, sid: str, window: Grower | Allowance) -> None:
    """The window a transfer reached (``peak``), what the sender kept to, and how often the
    budget cut a growth short (``capped``)."""
    sender = window.sender if isinstance(window, Grower) else window.size
    log.info(
        "event=file_window direction=%s sandbox=%s peak=%d sender=%d capped=%d",
        direction, sid, window.peak, sender, window.capped,
    )  # fmt: skip


__all__ = ["StreamAborted", "open_read", "share_key", "write"]
