"""Flow credit for one agent stream whose caller asked for it: an ``ExecStream``
(``ExecStart.credit``, :class:`CreditedExec`) or a ``PtyStream`` (``PtyStart.output_credit``,
``pty_rpc.CreditedPty``); and for the file streams, ``ReadFileCredit`` and ``WriteFileCredit``
(:func:`credited_read`, :func:`credited_write`: the same windows, see "file streams" below).

gRPC's own flow control bounds nothing useful here: grpc-core grows a stream's window with its
bandwidth probes (to ~4.5 MiB measured), and a receiver may buffer a whole message whatever the
window. A tenant holding many streams at commands that do not read stdin (or a client that
does not read stdout) could make the agent and the CP hold that much per stream. With credit,
each direction has a window of its own, kept by the sender:

- input: the caller sends at most its window of input beyond what this agent acknowledged
  (``ExecEvent.stdin_acked``, ``PtyEvent.input_acked``), and this agent acknowledges input once
  it is written to the guest connection (drained), in batches, so what the agent holds is at
  most the caller's window;
- output: this agent reads the guest's next event only while less than ``OUTPUT_WINDOW`` bytes of
  output it sent are unacknowledged (``output_acked`` in the stream's requests, sent by the
  caller once it has handed the bytes on); past it the guest holds the command back.

Requests are read at once whatever the command does with its input: an output acknowledgement
must never wait behind input the guest is not taking (the command blocked writing its output
would never read it). Input, resizes, ``close_stdin`` and signals keep their order, written by
one task; at most :data:`MAX_QUEUED_WRITES` of them wait (input bytes are bounded by the caller's
window, but not how many messages carry them: one byte each would cost ~100 times its size).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from warren.agent.guest_wire import ExecSession, GuestError
from warren.agent.settings import AgentSettings
from warren.aio import cancel_and_wait
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb
from warren.rpc.flow_window import BASE, Allowance, Budget, Grower

# Output bytes sent and not yet acknowledged, past which the guest's output is not read (the
# last event read may take it over by one guest frame, 64 KiB typically).
OUTPUT_WINDOW = 256 << 10
# The guest connection's reader buffer for a credit stream: asyncio reads the socket until it
# holds twice this, so the default (1 MiB, sized for file reads) would hold 2 MiB of output a
# stream past the window; the guest holds the command back instead.
READ_AHEAD = 64 << 10
# Stdin written to the guest is acknowledged once this much has gathered (one message per stdin
# message cost a third of a big pipe's throughput). The caller's window must be at least this
# plus its largest stdin message, or it would wait for an acknowledgement that is not coming:
# the CP's is 256 KiB, its messages at most 64 KiB.
STDIN_ACK_BYTES = 128 << 10
# Requests for the guest (input, resizes, signals) waiting to be written, past which requests
# are not read until one is written (acknowledgements then wait too: only for a caller flooding
# a guest that takes nothing, whose terminal the guest detaches after its stall limit).
MAX_QUEUED_WRITES = 256
Convert = Callable[[Any], pb.ExecEvent | None]  # a guest event as the RPC's (None: not sent)
Ev = TypeVar("Ev", pb.ExecEvent, pb.PtyEvent)  # the RPC's events
Req = TypeVar("Req", pb.ExecStreamRequest, pb.PtyRequest)  # the RPC's requests


class Window:
    """Bytes sent and not yet acknowledged: the sender waits for :meth:`room` before each send,
    so it is never more than ``size`` plus its last message ahead (``None``: no limit)."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.unacked = 0
        self._room = asyncio.Event()
        self._error: BaseException | None = None

    def sent(self, n: int) -> None:
        self.unacked += n

    def acked(self, n: int) -> None:
        self.unacked = max(0, self.unacked - n)
        self._room.set()

    def fail(self, e: BaseException) -> None:
        """The acknowledgements went wrong: :meth:`room` raises ``e`` from now on."""
        self._error = e
        self._room.set()

    async def room(self) -> None:
        while self._error is None and self.size is not None and self.unacked >= self.size:
            self._room.clear()
            await self._room.wait()
        if self._error is not None:
            raise self._error


class CreditedStream(Generic[Req, Ev]):
    """One credit stream over a guest session (async-iterated for its events): :meth:`events`
    is what the RPC answers, to the exit. Subclasses say what the RPC's messages are."""

    input_ack_bytes = STDIN_ACK_BYTES  # input written before it is acknowledged

    def __init__(self, source: AsyncIterator[Any], touch: Callable[[], None], *, output: bool = True) -> None:
        self._source = source
        self._output = Window(OUTPUT_WINDOW if output else None)  # None: no output acknowledged
        self._touch = touch
        self._written = 0  # input bytes written to the guest and not yet acknowledged
        self._out: asyncio.Queue[Ev | BaseException | None] = asyncio.Queue()  # None: ended, no exit
        # What the guest is to be sent, in order (bounded: MAX_QUEUED_WRITES, and the caller's
        # input window). None once the writer has stopped: the rest is dropped.
        self._writes: asyncio.Queue[Req] | None = asyncio.Queue()
        self._taken = asyncio.Event()

    # What the RPC's messages are.
    def convert(self, ev: Any) -> Ev | None:
        """A guest event as the RPC's (None: not sent); may raise to end the stream."""
        raise NotImplementedError

    def output_bytes(self, ev: Ev) -> int:
        raise NotImplementedError

    async def write(self, msg: Req) -> int:
        """One request to the guest: the input bytes written (raise to stop writing)."""
        raise NotImplementedError

    def input_acked(self, n: int) -> Ev:
        raise NotImplementedError

    async def events(self, requests: AsyncIterator[Req]) -> AsyncIterator[Ev]:
        tasks = [
            asyncio.create_task(self._read_output()),
            asyncio.create_task(self._read_requests(requests)),
            asyncio.create_task(self._write_input()),
        ]
        try:
            while True:
                got = await self._out.get()
                if isinstance(got, BaseException):
                    raise got
                if got is None:  # as the plain relay: the caller reports the missing exit
                    return
                yield got
                if got.HasField("exit"):
                    return
        finally:
            await cancel_and_wait(*tasks)

    async def _read_output(self) -> None:
        try:
            async for ev in self._source:
                out = self.convert(ev)
                if out is not None:
                    self._output.sent(self.output_bytes(out))
                    self._out.put_nowait(out)
                    if out.HasField("exit"):
                        return
                await self._output.room()
            self._out.put_nowait(None)
        except Exception as e:
            self._out.put_nowait(e)

    async def _read_requests(self, requests: AsyncIterator[Req]) -> None:
        with contextlib.suppress(grpc.RpcError):
            async for msg in requests:
                if msg.WhichOneof("msg") == "output_acked":
                    self._output.acked(msg.output_acked)
                elif self._writes is not None:
                    self._writes.put_nowait(msg)
                    while self._writes is not None and self._writes.qsize() >= MAX_QUEUED_WRITES:
                        self._taken.clear()
                        await self._taken.wait()
                self._touch()

    async def _write_input(self) -> None:
        assert self._writes is not None
        try:
            while True:
                msg = await self._writes.get()
                self._taken.set()
                self._written += await self.write(msg)
                if self._written >= self.input_ack_bytes:
                    self._out.put_nowait(self.input_acked(self._written))
                    self._written = 0
        except (GuestError, InvalidRequest):
            pass
        finally:
            self._writes = None
            self._taken.set()


class CreditedExec(CreditedStream[pb.ExecStreamRequest, pb.ExecEvent]):
    """An ``ExecStream`` with credit: stdin acknowledged in :data:`STDIN_ACK_BYTES` batches."""

    def __init__(self, session: ExecSession, convert: Convert, touch: Callable[[], None]) -> None:
        super().__init__(session, touch)
        self.session = session
        self._convert = convert

    def convert(self, ev: Any) -> pb.ExecEvent | None:
        out = self._convert(ev)
        if out is not None and out.HasField("start"):
            out.start.credit = True
        return out

    def output_bytes(self, ev: pb.ExecEvent) -> int:
        return len(ev.stdout) + len(ev.stderr)

    async def write(self, msg: pb.ExecStreamRequest) -> int:
        which = msg.WhichOneof("msg")
        if which == "stdin":
            await self.session.send_stdin(msg.stdin)
            return len(msg.stdin)
        if which == "close_stdin":
            await self.session.close_stdin()
        elif which == "signal":
            await self.session.signal(msg.signal)
        return 0

    def input_acked(self, n: int) -> pb.ExecEvent:
        return pb.ExecEvent(stdin_acked=n)


# ------------------------------------------------------------------------------- file streams
# ReadFileCredit and WriteFileCredit: the file streams with credit, on the same windows. A
# download's chunks are read from the guest only while less than OUTPUT_WINDOW of those sent is
# unacknowledged (its guest connection reads READ_AHEAD ahead); an upload's chunks are
# acknowledged once written to the guest connection, in STDIN_ACK_BYTES batches, and the caller
# keeps to its own window (the CP's: 256 KiB, in 64 KiB messages). Without them a transfer held
# gRPC's windows: 64 unread downloads, CP +306 MiB and agent +181 MiB; uploads into a guest
# that takes nothing, up to ~17 MiB of the agent each.
# Since session 14 the windows grow (rpc/flow_window.py): the receiver of the bytes grants them
# (the CP for a download, this agent for an upload), the sender keeps to them as far as its own
# budget allows, and says what it keeps to; this agent holds at most ``transfer_window_*`` of
# grown windows (its settings), per team and in all.
# The initial metadata both send before reading a request: the CP waits for it before writing
# one (an agent from before answers UNIMPLEMENTED instead; see cp/services/file_transfer.py).
# ``warren-file-window`` says this agent takes growing windows, up to that many bytes.
FILE_CREDIT_METADATA = (("warren-file-credit", "1"),)
FILE_WINDOW_KEY = "warren-file-window"
# How long a download that sent its end waits for the caller's half-close before it ends anyway.
END_WAIT_S = 30.0


@dataclass
class FileWindows:
    """This agent's growing file windows: their budget and the largest one."""

    budget: Budget
    largest: int

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (*FILE_CREDIT_METADATA, (FILE_WINDOW_KEY, str(self.largest)))

    def allowance(self, team: str) -> Allowance:
        """A download's window: the CP's grants as far as this agent allows."""
        return Allowance(self.budget, team, self.largest)

    def grower(self, team: str, meta: pb.WriteFileMeta) -> Grower | None:
        """An upload's window, granted here; None for a CP without growing windows."""
        if meta.window_max <= BASE:
            return None
        return Grower(self.budget, team, min(self.largest, meta.window_max))


_windows: FileWindows | None = None


def file_windows(settings: AgentSettings) -> FileWindows:
    """This process's file windows (one budget for every transfer)."""
    global _windows
    if _windows is None:
        mib = 1 << 20
        budget = Budget(settings.transfer_window_budget_mb * mib, settings.transfer_window_team_mb * mib)
        _windows = FileWindows(budget, settings.transfer_window_max)
    return _windows


async def upload_meta(requests: AsyncIterator[pb.WriteFileStreamRequest]) -> pb.WriteFileMeta:
    """An upload's first message, its ``meta``."""
    first = await anext(aiter(requests), None)
    if first is None:
        raise InvalidRequest("empty WriteFileStream")
    if first.WhichOneof("msg") != "meta":
        raise InvalidRequest("the first WriteFileStream message must be `meta`")
    return first.meta


async def upload_chunks(
    meta: pb.WriteFileMeta, requests: AsyncIterator[pb.WriteFileStreamRequest], context: Any,
    grower: Grower | None = None,
) -> AsyncIterator[bytes]:  # fmt: skip
    """The file bytes of an upload's requests after ``meta``; ends only on a whole upload.
    ``grower``: the upload's window, told what the caller keeps to."""
    committed = False
    async for msg in requests:
        kind = msg.WhichOneof("msg")
        if kind == "commit" and meta.explicit_commit and not committed:
            committed = True
        elif kind != "chunk" or committed:
            raise InvalidRequest("only `chunk` messages, then one `commit`, may follow `meta`")
        else:
            if msg.window and grower is not None:
                grower.sender_keeps(msg.window)
            yield msg.chunk
    # A client that cancels (a broken or oversize upload) ends the request stream too, and may
    # do so before the cancel is seen here: only a `commit` proves the upload whole. Never
    # commit a truncated file.
    if (meta.explicit_commit and not committed) or context.cancelled() or context.done():
        raise InvalidRequest("the upload was cancelled")


async def credited_read(
    chunks: AsyncGenerator[bytes], requests: AsyncIterator[pb.ReadFileCreditRequest],
    allowance: Allowance | None = None,
) -> AsyncGenerator[pb.ReadFileStreamResponse]:  # fmt: skip
    """A file's ``chunks`` as ReadFileCredit answers them, a window ahead of the acknowledgements
    in ``requests`` (after the first, ``open``, they only acknowledge, and may grant a larger
    window: ``allowance`` says how much of it this agent keeps to), then an empty message: the
    end, after which the caller half-closes."""
    window = Window(OUTPUT_WINDOW)
    told = OUTPUT_WINDOW  # the window the caller was last told this agent keeps to

    async def acks() -> None:
        with contextlib.suppress(grpc.RpcError):
            async for msg in requests:
                if msg.WhichOneof("msg") != "acked":
                    window.fail(InvalidRequest("only `acked` messages may follow `open`"))
                    return
                if msg.window and allowance is not None:
                    window.size = allowance.granted(msg.window)
                window.acked(msg.acked)

    acker = asyncio.create_task(acks())
    try:
        while True:
            await window.room()  # before the guest's next chunk is read: the guest waits meanwhile
            chunk = await anext(chunks, None)
            if chunk is None:
                break
            if chunk:  # an empty message is the end
                window.sent(len(chunk))
                size = window.size or OUTPUT_WINDOW
                grown, told = (size if size != told else 0), size
                yield pb.ReadFileStreamResponse(chunk=chunk, window=grown)
        # The end: an empty message, then the call ends only once the caller has half-closed.
        # Ended at once, it raced the caller's last acknowledgement, and a message sent on a call
        # that has just ended fails the call on the caller's side (INTERNAL, "Internal error
        # from Core"): a whole download broke at its last byte.
        await chunks.aclose()
        yield pb.ReadFileStreamResponse()
        await asyncio.wait((acker,), timeout=END_WAIT_S)
    finally:
        await cancel_and_wait(acker)
        await chunks.aclose()  # the guest connection, now
        if allowance is not None:
            allowance.close()


async def credited_write(
    write: Callable[[AsyncIterator[bytes]], Awaitable[int]], chunks: AsyncIterator[bytes],
    grower: Grower | None = None, *, stops_on_refusal: bool = False,
) -> AsyncGenerator[pb.WriteFileCreditEvent]:  # fmt: skip
    """``write`` (the guest's file write, over the chunks it is given) of an upload's ``chunks``,
    as WriteFileCredit answers it: ``ready``, ``acked`` as chunks are written, ``done``.
    ``grower``: the upload's growing window (None: the fixed one), granted with ``acked``.
    ``stops_on_refusal``: a caller that half-closes on ``refusing``; a refusal (the guest's
    error) is then told first and the call ends with it only once the caller has stopped
    sending: ended at once, a chunk on its way turned the caller's status into INTERNAL ("Internal
    error from Core", a 502 for what was the guest's 413 or 400; 1 in ~8 uploads into a full disk
    on loopback)."""
    out: asyncio.Queue[pb.WriteFileCreditEvent | BaseException] = asyncio.Queue()

    async def counted() -> AsyncIterator[bytes]:
        written, it = 0, aiter(chunks)
        while True:
            if grower is not None:
                grower.waiting()
            chunk = await anext(it, None)
            if chunk is None:
                return
            if grower is not None:
                grower.arrived()
            yield chunk
            # Asked for the next chunk: this one is written to the guest connection (drained).
            # At most a window's worth of acknowledgements ever waits in ``out``.
            written += len(chunk)
            grown = grower.consumed(len(chunk)) if grower is not None else None
            batch = grower.ack_batch(STDIN_ACK_BYTES) if grower is not None else STDIN_ACK_BYTES
            if written >= batch or grown:
                out.put_nowait(pb.WriteFileCreditEvent(acked=written, window=grown or 0))
                written = 0

    async def run() -> None:
        try:
            n = await write(counted())
            out.put_nowait(pb.WriteFileCreditEvent(done=pb.WriteFileResponse(bytes_written=n)))
        except Exception as e:
            out.put_nowait(e)

    yield pb.WriteFileCreditEvent(ready=True)
    task = asyncio.create_task(run())
    try:
        while True:
            ev = await out.get()
            if isinstance(ev, BaseException):
                if stops_on_refusal:
                    yield pb.WriteFileCreditEvent(refusing=True)
                    await _drop_until_half_closed(chunks)
                raise ev
            yield ev
            if ev.HasField("done"):
                return
    finally:
        await cancel_and_wait(task)
        if grower is not None:
            grower.close()


async def _drop_until_half_closed(chunks: AsyncIterator[bytes]) -> None:
    """The caller's chunks, dropped until it half-closes (or :data:`END_WAIT_S` passes)."""

    async def drop() -> None:
        with contextlib.suppress(Exception):  # the end without `commit`, a cancelled call
            async for _ in chunks:
                pass

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(END_WAIT_S):
            await drop()
