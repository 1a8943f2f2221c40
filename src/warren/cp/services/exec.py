"""Exec in a sandbox (SPEC §2.6 + DESIGN §4): unary exec, the exec stream behind the WebSocket,
and background processes (start, list, signal, stdin, attach).

The stream logic is written against two plain callables (``recv``/``send`` of JSON frames), so
the WebSocket handler stays thin and the protocol can be tested without a socket.

Frames to the client: ``start{pid}``, ``stdout``/``stderr`` with ``data`` (text) or ``data_b64``
(when the bytes are not UTF-8), ``exit{exit_code, error?, reason?}``, ``error{data, code,
status}``. Frames from the client: ``start`` or ``attach`` first, then ``stdin{data | data_b64}``,
``close_stdin``, ``signal{signal}`` and ``stop``. A ``start`` frame may carry ``stdin`` (text) or
``stdin_b64`` and ``close_stdin: true``, applied right after the process starts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import signal as _signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.hosts.client_pool import HostClient, HostClientPool, agent_errors, translate
from warren.cp.http_errors import status_and_code
from warren.cp.services import sandbox_access
from warren.cp.services.context import AuthContext
from warren.cp.services.env import EnvVars, validate_env
from warren.errors import AgentError, InvalidRequest, WarrenError
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.exec")

Frame = dict[str, Any]
M = TypeVar("M", bound=BaseModel)
Recv = Callable[[], Awaitable[Frame | None]]
Send = Callable[[Frame], Awaitable[None]]

FIRST_FRAME_ERROR = "first message must be type 'start' with a 'cmd' field"
# The agent's own default applies when timeout_sec <= 0 (SPEC §2.6).
AGENT_DEFAULT_TIMEOUT_S = 30
# Extra seconds the CP waits for an exec RPC beyond the command's own limit.
_RPC_SLACK_S = 15


# ------------------------------------------------------------------------------------- bodies


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: str = Field(default="", description="the executable (no shell); use /bin/sh -c for one")
    args: list[str] = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)
    cwd: str = ""
    timeout_sec: int = Field(default=0, description="seconds; <= 0 means the agent's default (30)")
    stdin: str | None = Field(default=None, description="text fed to the process's stdin")
    stdin_b64: str | None = Field(default=None, description="bytes (base64) fed to stdin")


class ExecResult(BaseModel):
    sandbox_id: str
    cmd: str
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    encoding: str = Field(description='"utf-8", or "base64" when stdout or stderr is not UTF-8')


class StartProcessBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: str = ""
    args: list[str] = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)
    cwd: str = ""
    tag: str = ""
    timeout_sec: int = Field(default=0, description="seconds; 0 = no limit")


class ProcessInfo(BaseModel):
    pid: int
    tag: str | None = None
    cmd: str
    args: list[str]
    cwd: str = ""


class SignalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: int | str = Field(default="SIGTERM", description='a number or a name such as "SIGKILL"')


class StdinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str | None = None
    data_b64: str | None = None
    close: bool = Field(default=False, description="close stdin after writing data (if any)")


def parse_body(model: type[M], raw: bytes) -> M:
    """Parse a JSON body into ``model`` with the API's 400 messages."""
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        raise InvalidRequest("invalid JSON body") from e
    if not isinstance(data, dict):
        raise InvalidRequest("invalid JSON body: expected an object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        if first.get("type") == "extra_forbidden":
            raise InvalidRequest(f"unknown field: {where}") from e
        raise InvalidRequest(f"invalid {where}: {first.get('msg', 'invalid value')}") from e


def decode_b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequest(f"{what} is not valid base64") from e


def parse_signal(value: int | str) -> int:
    if isinstance(value, int):
        if 0 < value < 65:
            return value
        raise InvalidRequest("signal must be in 1..64")
    name = value.strip().upper()
    if name.isascii() and name.isdigit():  # str.isdigit alone also accepts "²"
        return parse_signal(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(_signal.Signals[name])
    except KeyError as e:
        raise InvalidRequest(f"unknown signal {value!r}") from e


_PID_MAX = 2**31 - 1  # the RPC's pid is an int32


def selector(pid_or_tag: str) -> pb.ProcessSelector:
    """Digits select a pid, anything else a tag."""
    if not (pid_or_tag.isascii() and pid_or_tag.isdigit()):  # str.isdigit alone accepts "²"
        return pb.ProcessSelector(tag=pid_or_tag)
    pid = int(pid_or_tag)
    if not 0 < pid <= _PID_MAX:
        raise InvalidRequest(f"pid must be in 1..{_PID_MAX}")
    return pb.ProcessSelector(pid=pid)


# ----------------------------------------------------------------------------------- encoding


def encode_outputs(stdout: bytes, stderr: bytes) -> tuple[str, str, str]:
    """(stdout, stderr, encoding): text when both are UTF-8, else both base64 (SPEC §2.6)."""
    try:
        return stdout.decode("utf-8"), stderr.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(stdout).decode(), base64.b64encode(stderr).decode(), "base64"


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


def error_frame(exc: BaseException) -> Frame:
    if isinstance(exc, WarrenError):
        status, code = status_and_code(exc)
        return {"type": "error", "data": exc.message, "code": code, "status": status}
    return {"type": "error", "data": "internal error", "code": "internal_error", "status": 500}


# -------------------------------------------------------------------------------- unary exec


async def exec_command(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> ExecResult:
    """SPEC §2.6 in its order: id (400), sandbox (404), running (409), body (400), agent (503),
    RPC (mapped), then ``last_active_at``."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_body(ExecBody, raw_body)
    if not body.cmd:
        raise InvalidRequest("cmd is required")
    stdin = body.stdin.encode() if body.stdin is not None else b""
    if body.stdin_b64 is not None:
        stdin += decode_b64(body.stdin_b64, "stdin_b64")
    t0 = clock.monotonic()
    client = tgt.client()
    req = pb.ExecRequest(
        sandbox_id=tgt.sid,
        cmd=body.cmd,
        args=body.args,
        timeout_sec=max(body.timeout_sec, 0),
        env=body.env,
        cwd=body.cwd,
        stdin=stdin,
    )
    limit = body.timeout_sec if body.timeout_sec > 0 else AGENT_DEFAULT_TIMEOUT_S
    try:
        resp = await client.call("Exec", req, deadline=limit + _RPC_SLACK_S)
    except AgentError as e:
        if e.rpc_code == "DEADLINE_EXCEEDED" and clock.monotonic() - t0 < limit + _RPC_SLACK_S:
            # The agent killed the command at its time limit (our own deadline had not passed).
            # Still a 502 (SPEC §2.6), marked so clients can tell it from a failing host.
            raise AgentError(
                f"command timed out after {limit}s", rpc_code="DEADLINE_EXCEEDED", reason="timeout"
            ) from e
        raise
    duration_ms = int((clock.monotonic() - t0) * 1000)
    sandbox_access.touch_later(engine, tgt.uuid)
    out, err, encoding = encode_outputs(resp.stdout, resp.stderr)
    return ExecResult(
        sandbox_id=tgt.sid,
        cmd=body.cmd,
        stdout=out,
        stderr=err,
        exit_code=resp.exit_code,
        duration_ms=duration_ms,
        encoding=encoding,
    )


# ------------------------------------------------------------------------------- exec stream


async def stream_session(
    engine: AsyncEngine, client: HostClient, sandbox_uuid: Any, sid: str, recv: Recv, send: Send
) -> None:
    """Run one exec-stream session: the first client frame decides (``start`` or ``attach``),
    then events flow out and stdin/signals flow in until the process exits or the client stops.
    ``last_active_at`` is updated at the end, detached from the request (5 s budget)."""
    try:
        first = await recv()
    except Exception:  # a client that went away before saying anything
        return
    try:
        if isinstance(first, dict) and first.get("type") == "start" and isinstance(first.get("cmd"), str):
            if not first["cmd"]:
                await send(
                    {"type": "error", "data": FIRST_FRAME_ERROR, "code": "invalid_request", "status": 400}
                )
                return
            await _run_start(client, sid, first, recv, send)
        elif isinstance(first, dict) and first.get("type") == "attach" and _is_pid(first.get("pid")):
            await _run_attach(client, sid, int(first["pid"]), recv, send)
        else:
            await send({"type": "error", "data": FIRST_FRAME_ERROR, "code": "invalid_request", "status": 400})
            return
    finally:
        sandbox_access.touch_later(engine, sandbox_uuid)


def _is_pid(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _start_request(sid: str, f: Frame) -> pb.ExecStart:
    def strs(v: Any) -> list[str]:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise InvalidRequest("args must be a list of strings")
        return v

    env = validate_env(f.get("env"))
    timeout = f.get("timeout_sec") or 0
    if not isinstance(timeout, int) or timeout < 0:
        raise InvalidRequest("timeout_sec must be a non-negative integer")
    return pb.ExecStart(
        sandbox_id=sid,
        cmd=f["cmd"],
        args=strs(f.get("args")),
        env=env,
        cwd=str(f.get("cwd") or ""),
        timeout_sec=timeout,
        tag=str(f.get("tag") or ""),
        background=bool(f.get("background")),
    )


def _stdin_bytes(f: Frame) -> bytes:
    data = f.get("data")
    out = data.encode() if isinstance(data, str) else b""
    if isinstance(f.get("data_b64"), str):
        out += decode_b64(f["data_b64"], "data_b64")
    elif not isinstance(data, str):
        raise InvalidRequest("stdin frame needs data or data_b64")
    return out


async def _forward_events(call: Any, host_id: str, send: Send) -> None:
    """Agent events → client frames. Raises AgentError when the agent stream fails."""
    out, err = OutputEncoder("stdout"), OutputEncoder("stderr")
    with agent_errors(host_id):
        async for ev in call:
            which = ev.WhichOneof("event")
            frame: Frame | None
            if which == "stdout":
                frame = out.feed(ev.stdout)
            elif which == "stderr":
                frame = err.feed(ev.stderr)
            elif which == "start":
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


async def _pump(
    call: Any,
    host_id: str,
    recv: Recv,
    send: Send,
    on_frame: Callable[[Frame], Awaitable[bool]],
) -> None:
    """Run the output side and the input side together until the process ends, the client says
    ``stop``, or either side fails. ``on_frame`` handles one client frame; False means stop."""
    stopped = asyncio.Event()

    async def inbound() -> None:
        while True:
            try:
                f = await recv()
            except Exception:
                f = None
            if f is None or f.get("type") == "stop":
                break
            try:
                if not await on_frame(f):
                    break
            except WarrenError as e:
                # A bad client frame is reported but does not end the process.
                await send(error_frame(e) | {"fatal": False})
        stopped.set()
        call.cancel()

    in_task = asyncio.create_task(inbound())
    try:
        await _forward_events(call, host_id, send)
    except AgentError as e:
        if not stopped.is_set():
            await _safe_send(send, error_frame(e))
    except grpc.aio.AioRpcError as e:
        if not stopped.is_set():
            await _safe_send(send, error_frame(translate(e, host_id)))
    except asyncio.CancelledError:
        if not stopped.is_set():
            raise
    finally:
        in_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await in_task
        call.cancel()


async def _safe_send(send: Send, frame: Frame) -> None:
    with contextlib.suppress(Exception):
        await send(frame)


async def _run_start(client: HostClient, sid: str, first: Frame, recv: Recv, send: Send) -> None:
    try:
        start = _start_request(sid, first)
    except InvalidRequest as e:
        await send(error_frame(e))
        return
    queue: asyncio.Queue[pb.ExecStreamRequest | None] = asyncio.Queue()
    queue.put_nowait(pb.ExecStreamRequest(start=start))
    # Stdin given with the start frame (and closing it) travels with the start itself, so a
    # process that exits at once never races a client still sending its input.
    try:
        if first.get("stdin") is not None or first.get("stdin_b64") is not None:
            queue.put_nowait(pb.ExecStreamRequest(stdin=_stdin_bytes(
                {"data": first.get("stdin"), "data_b64": first.get("stdin_b64")}
            )))  # fmt: skip
    except InvalidRequest as e:
        await send(error_frame(e))
        return
    if first.get("close_stdin"):
        queue.put_nowait(pb.ExecStreamRequest(close_stdin=True))

    async def requests() -> AsyncIterator[pb.ExecStreamRequest]:
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    # No deadline: stream exec runs as long as the process (its own timeout_sec aside).
    call = client.stub.ExecStream(requests())

    async def on_frame(f: Frame) -> bool:
        kind = f.get("type")
        if kind == "stdin":
            queue.put_nowait(pb.ExecStreamRequest(stdin=_stdin_bytes(f)))
        elif kind == "close_stdin":
            queue.put_nowait(pb.ExecStreamRequest(close_stdin=True))
        elif kind == "signal":
            queue.put_nowait(pb.ExecStreamRequest(signal=parse_signal(f.get("signal", 15))))
        else:
            raise InvalidRequest(f"unknown frame type {kind!r}")
        return True

    try:
        await _pump(call, client.host_id, recv, send, on_frame)
    finally:
        queue.put_nowait(None)


async def _run_attach(client: HostClient, sid: str, pid: int, recv: Recv, send: Send) -> None:
    sel = pb.ProcessSelector(pid=pid)
    call = client.stub.AttachProcess(pb.AttachProcessRequest(sandbox_id=sid, process=sel))

    async def on_frame(f: Frame) -> bool:
        kind = f.get("type")
        if kind == "stdin":
            await client.call(
                "SendStdin", pb.SendStdinRequest(sandbox_id=sid, process=sel, data=_stdin_bytes(f))
            )
        elif kind == "close_stdin":
            await client.call("CloseStdin", pb.CloseStdinRequest(sandbox_id=sid, process=sel))
        elif kind == "signal":
            sig = parse_signal(f.get("signal", 15))
            await client.call(
                "SignalProcess", pb.SignalProcessRequest(sandbox_id=sid, process=sel, signal=sig)
            )
        else:
            raise InvalidRequest(f"unknown frame type {kind!r}")
        return True

    await _pump(call, client.host_id, recv, send, on_frame)


# ---------------------------------------------------------------------- background processes


async def start_process(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> ProcessInfo:
    """Start a background process (it outlives this request); its output can be attached to."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_body(StartProcessBody, raw_body)
    if not body.cmd:
        raise InvalidRequest("cmd is required")
    if body.timeout_sec < 0:
        raise InvalidRequest("timeout_sec must be >= 0")
    client = tgt.client()
    start = pb.ExecStart(
        sandbox_id=tgt.sid,
        cmd=body.cmd,
        args=body.args,
        env=body.env,
        cwd=body.cwd,
        timeout_sec=body.timeout_sec,
        tag=body.tag,
        background=True,
    )
    done = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ExecStreamRequest]:
        yield pb.ExecStreamRequest(start=start)
        await done.wait()

    call = client.stub.ExecStream(requests(), timeout=60)
    try:
        with agent_errors(client.host_id):
            async for ev in call:
                if ev.WhichOneof("event") == "start":
                    pid = ev.start.pid
                    break
                if ev.WhichOneof("event") == "exit":
                    raise AgentError(ev.exit.error or "process exited at once", rpc_code="INTERNAL")
            else:
                raise AgentError("the agent ended the stream before the process started", rpc_code="INTERNAL")
    finally:
        done.set()
        call.cancel()
    sandbox_access.touch_later(engine, tgt.uuid)
    return ProcessInfo(pid=pid, tag=body.tag or None, cmd=body.cmd, args=body.args, cwd=body.cwd)


async def list_processes(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> list[ProcessInfo]:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    resp = await tgt.client().call("ListProcesses", pb.ListProcessesRequest(sandbox_id=tgt.sid), deadline=30)
    return [
        ProcessInfo(pid=p.pid, tag=p.tag or None, cmd=p.cmd, args=list(p.args), cwd=p.cwd)
        for p in resp.processes
    ]


async def signal_process(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    pid_or_tag: str,
    raw_body: bytes,
) -> None:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_body(SignalBody, raw_body)
    sig = parse_signal(body.signal)
    req = pb.SignalProcessRequest(sandbox_id=tgt.sid, process=selector(pid_or_tag), signal=sig)
    await tgt.client().call("SignalProcess", req, deadline=30)


async def send_stdin(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    pid_or_tag: str,
    raw_body: bytes,
) -> None:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_body(StdinBody, raw_body)
    data = body.data.encode() if body.data is not None else b""
    if body.data_b64 is not None:
        data += decode_b64(body.data_b64, "data_b64")
    if not data and not body.close:
        raise InvalidRequest("data, data_b64 or close is required")
    client, sel = tgt.client(), selector(pid_or_tag)
    if data:
        await client.call(
            "SendStdin", pb.SendStdinRequest(sandbox_id=tgt.sid, process=sel, data=data), deadline=30
        )
    if body.close:
        await client.call("CloseStdin", pb.CloseStdinRequest(sandbox_id=tgt.sid, process=sel), deadline=30)


__all__ = [
    "ExecBody",
    "ExecResult",
    "OutputEncoder",
    "ProcessInfo",
    "encode_outputs",
    "exec_command",
    "list_processes",
    "send_stdin",
    "signal_process",
    "start_process",
    "stream_session",
]
