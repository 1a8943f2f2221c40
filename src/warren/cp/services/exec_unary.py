"""Unary exec (docs/spec.md §2.6): run a command, wait for it, answer its output as one JSON object.

Memory is what makes this route dangerous (issue 11, D2/D10): the answer holds the whole output.
So the output is collected from the agent's exec *stream*, chunk by chunk, each chunk reserved
in the replica's byte budget (``services.budget``) before it is kept, and at most
``max_output`` bytes of stdout and stderr together (past it the call is cancelled, which kills
the command, and the answer is 413 ``output_too_large``). The JSON is then written out a chunk
at a time, so the only copy the CP ever holds is the raw output, never its decoded text or its
escaped JSON (which is up to six times larger). Cancelling the call (the HTTP client went away)
cancels the stream: the agent kills the command.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import sandbox_access, sandboxes, snapshot_hold
from warren.cp.services.budget import ByteBudget, share_key, unary_budget
from warren.cp.services.context import AuthContext
from warren.cp.services.exec import (
    AGENT_DEFAULT_TIMEOUT_S,
    ExecBody,
    after_start,
    decode_b64,
    parse_command,
)
from warren.errors import AgentError, PayloadTooLarge
from warren.rpc import hostagent_pb2 as pb

_RPC_SLACK_S = 15  # seconds the CP waits beyond the command's own limit
_END_WAIT_S = 1.0  # after the exit event, for the call's own end
_PIECE = 1 << 16  # rendered JSON is written in pieces of about this many input bytes
_RUNNING = ("running",)


@dataclass
class UnaryAnswer:
    """The JSON body: ``whole`` when the output is small (rendered at once), else ``body``,
    produced piece by piece; ``release`` gives the budget back (once), after the answer is sent."""

    release: Callable[[], None]
    body: AsyncIterator[bytes] | None = None
    whole: bytes | None = None


@dataclass
class Output:
    """A finished command's output as the raw chunks it arrived in."""

    stdout: list[bytes]
    stderr: list[bytes]
    exit_code: int
    duration_ms: int


async def exec_command(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    raw_body: bytes,
    *,
    max_timeout: int,
    max_output: int,
) -> UnaryAnswer:
    """docs/spec.md §2.6 in its order: id (400), sandbox (404), running (409), body (400), agent (503),
    RPC (mapped), then ``last_active_at``."""
    # The lookup's few columns (find_brief): no view is built and no JSONB decoded per exec.
    tgt = await sandboxes.find_brief(engine, ctx, sandbox_id)
    # Paused for its own snapshot: wait for its resume (snapshot_hold), then judge it.
    while tgt.row["status"] == "paused" and await snapshot_hold.wait_out(engine, ctx, tgt.sb_uuid):
        tgt = await sandboxes.find_brief(engine, ctx, sandbox_id)
    sandboxes.check_state(tgt.row["status"], _RUNNING)
    body = parse_command(ExecBody, raw_body, max_timeout)
    limit = body.timeout_sec if body.timeout_sec > 0 else AGENT_DEFAULT_TIMEOUT_S
    sid = tgt.sid
    messages = _messages(sid, body, limit)
    client = tgt.agent(pool)
    held = _Held(unary_budget(), share_key(ctx))
    t0, sent = clock.monotonic(), clock.now()
    try:
        out = await _run(client, messages, held, limit, max_output)
        if isinstance(out, AgentError):
            # Refused before it started: its lookup may have raced a snapshot's pause. Once
            # that is over (snapshot_hold), it is judged and sent again, once.
            if not await snapshot_hold.refused_for_snapshot(engine, ctx, tgt.sb_uuid, out, sent):
                raise out
            sandboxes.check_state(
                (await sandboxes.find_brief(engine, ctx, sandbox_id)).row["status"], _RUNNING
            )
            t0 = clock.monotonic()
            out = await _run(client, messages, held, limit, max_output)
            if isinstance(out, AgentError):
                raise out
    except BaseException:
        held.release()
        raise
    out.duration_ms = int((clock.monotonic() - t0) * 1000)
    sandbox_access.touch_later(engine, tgt.sb_uuid, seen=tgt.last_active_at)
    if held.bytes > _PIECE:
        return UnaryAnswer(held.release, body=render(sid, body.cmd, out, held.release))
    # Most answers: one write with a length instead of a chunked stream (~5 writes). The budget
    # stays held until the answer is written, as for a stream.
    try:
        whole = render_whole(sid, body.cmd, out)
    except BaseException:
        held.release()
        raise
    return UnaryAnswer(held.release, whole=whole)


async def _run(
    client: HostClient, messages: list[pb.ExecStreamRequest], held: _Held, limit: int, max_output: int
) -> Output | AgentError:
    """The command's output; the agent's refusal before the command started is returned."""
    started = asyncio.Event()
    call: Any = None
    requests = _requests(messages, started, ended=lambda: call.done())
    call = client.stub.ExecStream(requests, timeout=limit + _RPC_SLACK_S)
    try:
        return await _collect(call, held, limit, max_output, started)
    except AgentError as e:
        if started.is_set():
            raise
        return e


def _messages(sid: str, body: ExecBody, limit: int) -> list[pb.ExecStreamRequest]:
    """The whole request stream: start, the stdin (if any), and stdin closed."""
    stdin = body.stdin.encode() if body.stdin is not None else b""
    if body.stdin_b64 is not None:
        stdin += decode_b64(body.stdin_b64, "stdin_b64")
    start = pb.ExecStart(
        sandbox_id=sid, cmd=body.cmd, args=body.args, env=body.env, cwd=body.cwd, timeout_sec=limit,
        user=body.user,
    )  # fmt: skip
    messages = [pb.ExecStreamRequest(start=start)]
    if stdin:
        messages.append(pb.ExecStreamRequest(stdin=stdin))
    messages.append(pb.ExecStreamRequest(close_stdin=True))
    return messages


class _Held:
    """The output bytes kept so far, reserved in the replica's budget; ``release`` gives them
    back (once: on failure here, or when the answer has been written)."""

    def __init__(self, budget: ByteBudget, key: str = "") -> None:
        self.budget, self.key, self.bytes, self.released = budget, key, 0, False

    async def take(self, n: int) -> None:
        await self.budget.acquire(n, key=self.key)
        self.bytes += n

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.release(self.bytes, self.key)


async def _collect(call: Any, held: _Held, limit: int, max_output: int, started: asyncio.Event) -> Output:
    """The command's output, chunk by chunk, until its exit event."""
    out = Output([], [], 0, 0)
    try:
        async for ev in call:
            started.set()
            which = ev.WhichOneof("event")
            if which in ("stdout", "stderr"):
                data = getattr(ev, which)
                if held.bytes + len(data) > max_output:
                    raise PayloadTooLarge(_too_large(max_output), code="output_too_large")
                await held.take(len(data))
                (out.stdout if which == "stdout" else out.stderr).append(data)
            elif which == "exit":
                _check_exit(ev.exit, limit)
                out.exit_code = ev.exit.exit_code
                await _ended(call)
                return out
        raise AgentError("the agent ended the exec without an exit event", rpc_code="INTERNAL")
    finally:
        call.cancel()  # after the call's end: a no-op; before the exit: the agent kills the command


async def _ended(call: Any) -> None:
    """The call's own end, which the agent sends right after the exit event. Cancelled at once
    instead, a call whose request writer still had ``close_stdin`` or the half-close in flight
    (a third to a half of the execs of ``true``) makes grpc.aio format that writer's traceback
    (~0.5 ms of CPU). Whatever follows the exit is ignored, as the cancel did; an agent that
    keeps the call open is cancelled after ``_END_WAIT_S`` (``_collect``'s ``finally``)."""
    with contextlib.suppress(TimeoutError, AgentError):
        async with asyncio.timeout(_END_WAIT_S):
            async for _ in call:
                pass


async def _requests(
    messages: list[pb.ExecStreamRequest], started: asyncio.Event, ended: Callable[[], bool]
) -> AsyncIterator[pb.ExecStreamRequest]:
    """The messages, the stdin only once the agent took the start (exec_stream), and nothing
    once the call has ended. A short command often ends before its ``close_stdin`` is written:
    grpc.aio takes a write after the end for the iterator's own error, formats its traceback and
    cancels the call (~0.5 ms of CPU, in about half of the execs of ``true``)."""
    start, *rest = messages
    yield start
    await after_start(started)
    for m in rest:
        if ended():
            return
        yield m


def _too_large(cap: int) -> str:
    return (
        f"the command printed more than {cap} bytes (stdout and stderr together), the most a "
        "unary exec answers; it was killed. Use the streaming exec (WebSocket) for large output."
    )


def _check_exit(ev: pb.ExecEvent.Exit, limit: int) -> None:
    """An exit event that is a failure rather than a result: the time limit (502 marked
    ``reason: timeout``, docs/spec.md §2.6) or a broken guest connection (502)."""
    if not ev.error or ev.error.startswith("killed by signal"):
        return
    if "timed out" in ev.error:
        raise AgentError(f"command timed out after {limit}s", rpc_code="DEADLINE_EXCEEDED", reason="timeout")
    raise AgentError(f"host agent unreachable: {ev.error}", rpc_code="UNAVAILABLE")


def _is_utf8(chunks: list[bytes]) -> bool:
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        for c in chunks:
            dec.decode(c)
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _pieces(chunks: list[bytes]) -> Iterator[bytes]:
    """The chunks, consumed (each freed once written), regrouped into pieces of about
    ``_PIECE`` bytes: fewer, larger writes."""
    chunks.reverse()
    buf = bytearray()
    while chunks:
        buf += chunks.pop()
        if len(buf) >= _PIECE:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _text_json(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        dec = codecs.getincrementaldecoder("utf-8")()
        for c in chunks:
            text = dec.decode(c)
            if text:
                yield json.dumps(text, ensure_ascii=False)[1:-1].encode()
        tail = dec.decode(b"", final=True)
        if tail:
            yield json.dumps(tail, ensure_ascii=False)[1:-1].encode()

    return gen()


def _b64_json(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        carry = b""
        for c in chunks:
            data = carry + c
            cut = len(data) - len(data) % 3
            carry = data[cut:]
            if cut:
                yield base64.b64encode(data[:cut])
        if carry:
            yield base64.b64encode(carry)

    return gen()


async def render(sid: str, cmd: str, out: Output, release: Callable[[], None]) -> AsyncIterator[bytes]:
    """``ExecResult`` as JSON, written a piece at a time (same fields, same order). The output is
    text when stdout and stderr are both UTF-8, else both are base64 (docs/spec.md §2.6)."""
    try:
        text = _is_utf8(out.stdout) and _is_utf8(out.stderr)
        encode = _text_json if text else _b64_json
        head: dict[str, Any] = {"sandbox_id": sid, "cmd": cmd}
        yield json.dumps(head, ensure_ascii=False)[:-1].encode() + b',"stdout":"'
        async for piece in encode(_pieces(out.stdout)):
            yield piece
        yield b'","stderr":"'
        async for piece in encode(_pieces(out.stderr)):
            yield piece
        tail = {
            "exit_code": out.exit_code,
            "duration_ms": out.duration_ms,
            "encoding": "utf-8" if text else "base64",
        }
        yield b'",' + json.dumps(tail)[1:].encode()
    finally:
        release()


def render_whole(sid: str, cmd: str, out: Output) -> bytes:
    """:func:`render`'s bytes at once, for an output of at most ``_PIECE`` bytes: the same
    decisions (strict UTF-8 of each stream as a whole, else base64 of both) and the same JSON,
    without render's generators (JSON escapes each character alone, base64 each 3 bytes, so the
    whole equals the pieces)."""
    stdout, stderr = b"".join(out.stdout), b"".join(out.stderr)
    try:
        text = True
        so = json.dumps(stdout.decode(), ensure_ascii=False)[1:-1].encode()
        se = json.dumps(stderr.decode(), ensure_ascii=False)[1:-1].encode()
    except UnicodeDecodeError:
        text = False
        so, se = base64.b64encode(stdout), base64.b64encode(stderr)
    head = json.dumps({"sandbox_id": sid, "cmd": cmd}, ensure_ascii=False)[:-1].encode()
    tail = {
        "exit_code": out.exit_code,
        "duration_ms": out.duration_ms,
        "encoding": "utf-8" if text else "base64",
    }
    return b"".join((head, b',"stdout":"', so, b'","stderr":"', se, b'",', json.dumps(tail)[1:].encode()))


__all__ = ["Output", "UnaryAnswer", "exec_command", "render", "render_whole"]
