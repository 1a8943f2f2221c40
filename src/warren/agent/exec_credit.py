"""Flow credit for one ``ExecStream`` whose caller asked for it (``ExecStart.credit``).

gRPC's own flow control bounds nothing useful here: grpc-core grows a stream's window with its
bandwidth probes (to ~4.5 MiB measured), and a receiver may buffer a whole message whatever the
window. A tenant holding many streams at commands that do not read stdin (or a client that
does not read stdout) could make the agent and the CP hold that much per stream. With credit,
each direction has a window of its own, kept by the sender:

- stdin: the caller sends at most its window of stdin beyond what this agent acknowledged
  (``ExecEvent.stdin_acked``), and this agent acknowledges stdin once it is written to the guest
  connection (drained), in batches, so what the agent holds is at most the caller's window;
- output: this agent reads the guest's next event only while less than ``OUTPUT_WINDOW`` bytes of
  stdout/stderr it sent are unacknowledged (``ExecStreamRequest.output_acked``, sent by the caller
  once it has handed the bytes on); past it the guest holds the command back.

Requests are read at once whatever the command does with its stdin: an output acknowledgement
must never wait behind stdin the guest is not taking (the command blocked writing its output
would never read it). Stdin, ``close_stdin`` and signals keep their order, written by one task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from warren.agent.guest_wire import ExecSession, GuestError
from warren.rpc import hostagent_pb2 as pb

# Stdout and stderr bytes sent and not yet acknowledged, past which the guest's output is not
# read (the last event read may take it over by one guest frame, 64 KiB typically).
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
Convert = Callable[[Any], pb.ExecEvent | None]  # a guest event as the RPC's (None: not sent)
Out = pb.ExecEvent | BaseException | None  # None: the guest's events ended (no exit)


class CreditedExec:
    """One credit stream: :meth:`events` is what the RPC answers, start to exit."""

    def __init__(self, session: ExecSession, convert: Convert, touch: Callable[[], None]) -> None:
        self.session = session
        self._convert = convert
        self._touch = touch
        self._unacked = 0  # output bytes sent and not acknowledged
        self._written = 0  # stdin bytes written to the guest and not yet acknowledged
        self._room = asyncio.Event()
        self._room.set()
        self._out: asyncio.Queue[Out] = asyncio.Queue()  # events, acks, and how the output ended
        # What the guest is to be sent, in order. Bounded by the caller: stdin by its window, the
        # rest are a few bytes each.
        self._writes: asyncio.Queue[pb.ExecStreamRequest] = asyncio.Queue()

    async def events(self, requests: AsyncIterator[pb.ExecStreamRequest]) -> AsyncIterator[pb.ExecEvent]:
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
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t

    async def _read_output(self) -> None:
        try:
            async for ev in self.session:
                out = self._convert(ev)
                if out is not None:
                    if out.HasField("start"):
                        out.start.credit = True
                    sent = len(out.stdout) + len(out.stderr)
                    self._unacked += sent
                    self._out.put_nowait(out)
                    if out.HasField("exit"):
                        return
                while self._unacked >= OUTPUT_WINDOW:
                    self._room.clear()
                    await self._room.wait()
            self._out.put_nowait(None)
        except Exception as e:
            self._out.put_nowait(e)

    async def _read_requests(self, requests: AsyncIterator[pb.ExecStreamRequest]) -> None:
        with contextlib.suppress(grpc.RpcError):
            async for msg in requests:
                if msg.WhichOneof("msg") == "output_acked":
                    self._unacked = max(0, self._unacked - msg.output_acked)
                    self._room.set()
                else:
                    self._writes.put_nowait(msg)
                self._touch()

    async def _write_input(self) -> None:
        with contextlib.suppress(GuestError):
            while True:
                msg = await self._writes.get()
                which = msg.WhichOneof("msg")
                if which == "stdin":
                    await self.session.send_stdin(msg.stdin)
                    self._written += len(msg.stdin)
                    if self._written >= STDIN_ACK_BYTES:
                        self._out.put_nowait(pb.ExecEvent(stdin_acked=self._written))
                        self._written = 0
                elif which == "close_stdin":
                    await self.session.close_stdin()
                elif which == "signal":
                    await self.session.signal(msg.signal)
