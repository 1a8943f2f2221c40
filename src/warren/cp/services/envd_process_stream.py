"""E2B envd's process streams (docs/e2b.md §3.1): ``Start`` and ``Connect`` as event iterators
over the agent's ``ExecStream``, ``AttachProcess`` and ``PtyStream``.

Lifetime: a started process outlives its stream (a background exec; a terminal that the stream
only attaches to) and dies at its ``Connect-Timeout-Ms`` (the exec's, the terminal's own timeout,
kept by the guest). Flow: the starter's stream backpressures its command (the agent's
``backpressure``) instead of being detached behind it, and events are produced only as the
client reads them. Keepalive events fill idle stretches longer than the client's interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

from warren.cp.hosts.client_pool import DEFAULT_TIMEOUT_S, HostClient
from warren.cp.services import sandbox_access
from warren.cp.services.envd_process import (
    DEFAULT_USER,
    Ended,
    EnvdSandbox,
    Keepalive,
    Output,
    ProcessEvent,
    ProcessSpec,
    Selector,
    Started,
    ended,
    gone,
    sandbox_gone,
)
from warren.cp.services.exec import check_timeout
from warren.cp.services.exec_stream import OUTPUT_ACK_BYTES
from warren.cp.services.pty import OutputAcks
from warren.errors import AgentError, InvalidRequest, NotFound
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.e2b.process")
T = TypeVar("T")


async def start(sbx: EnvdSandbox, spec: ProcessSpec, *, max_timeout_s: int) -> AsyncIterator[ProcessEvent]:
    """``Start``: ``Started`` first, then output, then ``Ended`` (keepalives between). Closing
    the iterator (the client went away) leaves the process running."""
    timeout_s = math.ceil(spec.timeout_ms / 1000) if spec.timeout_ms else 0
    check_timeout(timeout_s, max_timeout_s)
    with sandbox_gone(sbx):
        first, events = await _open(sbx.client(), sbx, spec, timeout_s)
        try:
            async for ev in with_keepalive(_chain(first, events), spec.keepalive_s):
                yield ev
        finally:
            await events.aclose()
            sandbox_access.touch_later(sbx.engine, sbx.found.sb_uuid)


async def connect(
    sbx: EnvdSandbox, sel: Selector, *, keepalive_s: float | None
) -> AsyncIterator[ProcessEvent]:
    """``Connect``: a running process's events, its recent output replayed first (the agent's
    attach replays up to 1 MiB of a background process, 64 KiB of a terminal). A process that
    has exited is not found, as in envd (Warren keeps it for its own attach)."""
    with sandbox_gone(sbx):
        client = sbx.client()
        req = pb.ListProcessesRequest(sandbox_id=sbx.sid)
        procs = (await client.stub.ListProcesses(req, timeout=DEFAULT_TIMEOUT_S)).processes
        mine = [p for p in procs if (p.pid == sel.pid if sel.pid else p.tag == sel.tag)]
        if any(p.running for p in mine):
            events = _attach_events(client, sbx.sid, sel)
        elif sel.pid and not mine:
            events = _pty_attach(client, sbx.sid, sel.pid)  # a terminal of that pid, perhaps
        else:
            raise NotFound(f"process {sel.pid or sel.tag} not found")
        try:
            async for ev in with_keepalive(events, keepalive_s):
                yield ev
        finally:
            await events.aclose()


# -------------------------------------------------------------------------------- user, cwd


async def _open(
    client: HostClient, sbx: EnvdSandbox, spec: ProcessSpec, timeout_s: int
) -> tuple[ProcessEvent, AsyncGenerator[ProcessEvent, None]]:
    """The started process's first event and the rest. It runs as the call's user, else as
    E2B's ``user`` where the template has that account, else as the template's user (``""``)."""
    candidates = [spec.user] if spec.user else [DEFAULT_USER, ""]
    for i, user in enumerate(candidates):
        try:
            cwd = await _cwd(client, sbx.sid, spec.cwd, user)
            events = (
                _pty_events(client, sbx, spec, user, cwd, timeout_s)
                if spec.pty
                else _exec_events(client, sbx.sid, spec, user, cwd, timeout_s)
            )
            try:
                return await anext(events), events
            except BaseException:
                await events.aclose()
                raise
        except AgentError as e:
            if i + 1 == len(candidates) or "no such user" not in e.message:
                raise
    raise AssertionError("unreachable: the last candidate returns or raises")


async def _cwd(client: HostClient, sid: str, cwd: str, user: str) -> str:
    """Where it runs: an absolute ``cwd`` as given; none: the template's working directory, else
    the user's home (the agent's default, as envd's default workdir); a relative one under the
    user's home, resolved (and checked to be a directory) as the user, inside the sandbox."""
    if not cwd or cwd.startswith("/"):
        return cwd
    req = pb.StatRequest(sandbox_id=sid, path=cwd, follow_symlinks=True, user=user)
    resp = await client.stub.Stat(req, timeout=DEFAULT_TIMEOUT_S)
    if resp.entry.type != "dir":
        raise InvalidRequest(f"cwd {cwd!r} is not a directory")
    return resp.entry.path


async def _chain(first: ProcessEvent, rest: AsyncIterator[ProcessEvent]) -> AsyncIterator[ProcessEvent]:
    yield first
    async for ev in rest:
        yield ev


# ------------------------------------------------------------------------------------- exec


async def _exec_events(
    client: HostClient, sid: str, spec: ProcessSpec, user: str, cwd: str, timeout_s: int
) -> AsyncGenerator[ProcessEvent, None]:
    """The exec's events, with flow credit (``ExecStart.credit``, as exec streams have it): the
    agent sends at most its output window (256 KiB) beyond what this stream has acknowledged as
    handed on to the client, so a client that does not read holds its command back instead of
    making gRPC's window (MiBs a stream) fill the CP and the agent."""
    first = pb.ExecStart(
        sandbox_id=sid, cmd=spec.cmd, args=spec.args, env=spec.env, cwd=cwd, timeout_sec=timeout_s,
        tag=spec.tag, background=True, user=user, backpressure=True, credit=True,
    )  # fmt: skip
    started = asyncio.Event()
    credit = False  # the agent keeps to it (its start event says)
    acks: asyncio.Queue[pb.ExecStreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ExecStreamRequest]:
        # Input goes by SendStdin. Without credit the request side ends (a half-close, which the
        # agent's input pump takes as "nothing more") after its last message instead of waiting
        # to be cancelled with the call: grpc formats a traceback for a cancelled request
        # iterator, ~0.1 ms of the CP's CPU per command. With credit it carries the output
        # acknowledgements until the end.
        yield pb.ExecStreamRequest(start=first)
        await started.wait()  # nothing after a refused start (grpc/grpc#36066)
        # envd's stdin: false is an input at EOF at once. Not once the call has ended (a short
        # command often has): grpc.aio takes that write for the iterator's error, ~0.5 ms.
        if not spec.stdin and not call.done():
            yield pb.ExecStreamRequest(close_stdin=True)
        while credit and (ack := await acks.get()) is not None:
            yield ack

    def on_start(ev: pb.ExecEvent) -> None:
        nonlocal credit
        credit = ev.start.credit
        started.set()

    call = client.stub.ExecStream(requests())
    taken = 0
    try:
        async for event in _process_events(client, sid, call, on_start):
            yield event  # back here once the client's stream has taken it
            if credit and isinstance(event, Output):
                taken += len(event.data)
                if taken >= OUTPUT_ACK_BYTES:
                    acks.put_nowait(pb.ExecStreamRequest(output_acked=taken))
                    taken = 0
    finally:
        acks.put_nowait(None)
        call.cancel()  # a background exec runs on without its stream


async def _process_events(
    client: HostClient, sid: str, call: Any, on_start: Callable[[pb.ExecEvent], None] | None = None
) -> AsyncGenerator[ProcessEvent, None]:
    """An ExecStream's or AttachProcess's events as envd's, up to the end (which must come)."""
    async for ev in call:
        which = ev.WhichOneof("event")
        if which == "start":
            if on_start is not None:
                on_start(ev)
            yield Started(ev.start.pid)
        elif which in ("stdout", "stderr"):
            yield Output(which, getattr(ev, which))
        elif which == "exit":
            yield await _exec_end(client, sid, ev.exit)
            return
    raise AgentError("the agent ended the stream without an exit event", rpc_code="INTERNAL")


async def _exec_end(client: HostClient, sid: str, done: pb.ExecEvent.Exit) -> Ended:
    """An exec's exit event as envd's end. The agent reports a session the guest broke off (a
    reader detached, the connection lost) as exit -1 with the reason: that is no end of the
    process, so the stream fails instead. When the sandbox went with it (killed meanwhile; its
    row may still say running), that is :func:`gone`, else ``unavailable``."""
    if done.exit_code == -1 and done.error and "timed out" not in done.error:
        await _broke_off(client, sid, done.error)
    # The guest's note on a timeout is implied by "signal: killed" (envd says no more).
    return ended(done.exit_code, "" if "timed out" in done.error else done.error)


async def _broke_off(client: HostClient, sid: str, reason: str) -> NoReturn:
    """A process's stream that ended without its end: :func:`gone` when its sandbox went with it
    (the agent no longer has it running, or cannot reach its guest), else ``unavailable``."""
    try:
        await client.stub.ListProcesses(pb.ListProcessesRequest(sandbox_id=sid), timeout=DEFAULT_TIMEOUT_S)
    except AgentError as e:
        if (e.rpc_code or "").upper() in ("NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE"):
            raise gone(sid) from None
        raise
    raise AgentError(f"the process's output stream broke off: {reason}", rpc_code="UNAVAILABLE")


async def _attach_events(client: HostClient, sid: str, sel: Selector) -> AsyncGenerator[ProcessEvent, None]:
    call = client.stub.AttachProcess(pb.AttachProcessRequest(sandbox_id=sid, process=sel.pb()))
    try:
        async for event in _process_events(client, sid, call):
            yield event
    finally:
        call.cancel()


# -------------------------------------------------------------------------------- terminals


def _pty_events(
    client: HostClient, sbx: EnvdSandbox, spec: ProcessSpec, user: str, cwd: str, timeout_s: int
) -> AsyncGenerator[ProcessEvent, None]:
    assert spec.pty is not None
    cols, rows = spec.pty
    first = pb.PtyStart(
        sandbox_id=sbx.sid, size=pb.PtySize(cols=cols, rows=rows), cmd=spec.cmd, args=spec.args,
        env=spec.env, cwd=cwd, user=user, timeout_sec=timeout_s, credit=True, output_credit=True,
    )  # fmt: skip
    return _pty_relay(client, pb.PtyRequest(start=first))


async def _pty_attach(client: HostClient, sid: str, pid: int) -> AsyncGenerator[ProcessEvent, None]:
    connect = pb.PtyConnect(sandbox_id=sid, pid=pid, credit=True, output_credit=True)
    async for ev in _pty_relay(client, pb.PtyRequest(connect=connect)):
        yield ev


async def _pty_relay(client: HostClient, first: pb.PtyRequest) -> AsyncGenerator[ProcessEvent, None]:
    """The terminal's events, with output credit (``pty.OutputAcks``, as Warren's terminals):
    output is acknowledged to the agent once the client's stream has taken it, so an unread
    terminal is held back by the guest, not buffered here."""
    sid = first.start.sandbox_id if first.HasField("start") else first.connect.sandbox_id
    acks: asyncio.Queue[pb.PtyRequest | None] = asyncio.Queue()  # None: the end
    output = OutputAcks()

    async def requests() -> AsyncIterator[pb.PtyRequest]:
        yield first  # input, resizes and signals go by PtyControl
        while (ack := await acks.get()) is not None:
            yield ack

    call = client.stub.PtyStream(requests())
    try:
        async for ev in call:
            which = ev.WhichOneof("event")
            if which == "started":
                output.started(ev)
                yield Started(ev.started)
            elif which == "output":
                yield Output("pty", ev.output)  # back here once the client's stream has taken it
                if (ack := output.taken(len(ev.output))) is not None:
                    acks.put_nowait(ack)
            elif which == "exit":
                yield ended(ev.exit.exit_code, ev.exit.error)
                return
        raise AgentError("the agent ended the terminal stream without an exit", rpc_code="INTERNAL")
    except AgentError as e:
        if (e.rpc_code or "").upper() == "UNAVAILABLE":  # the guest connection broke
            await _broke_off(client, sid, e.message)
        raise
    finally:
        acks.put_nowait(None)
        call.cancel()  # detach: the terminal runs on


# -------------------------------------------------------------------------------- keepalive


async def with_keepalive(source: AsyncIterator[T], interval_s: float | None) -> AsyncIterator[T | Keepalive]:
    """``source``'s items, and a :class:`Keepalive` whenever none came for ``interval_s``. One
    item is asked for at a time, so a slow reader still holds the source back."""
    if not interval_s:
        async for item in source:
            yield item
        return
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield Keepalive()
                continue
            fut, pending = pending, None
            try:
                item = fut.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
