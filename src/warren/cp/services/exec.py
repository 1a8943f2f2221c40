"""Exec in a sandbox (docs/spec.md §2.6 + docs/design.md §4): background processes (start, list, signal,
stdin) and what every exec shares: bodies, signals, process selectors, the timeout rule.

The unary exec lives in ``exec_unary``, the WebSocket stream protocol in ``exec_stream``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import signal as _signal
from collections.abc import AsyncIterator
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import sandbox_access
from warren.cp.services.context import AuthContext
from warren.cp.services.env import EnvVars
from warren.cp.services.strict import INT32_MAX, StrictBody, check_text, json_object
from warren.errors import AgentError, InvalidRequest
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.exec")

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", "ExecBody", "StartProcessBody")
# The default limit of a unary exec whose timeout_sec is <= 0 (docs/spec.md §2.6).
AGENT_DEFAULT_TIMEOUT_S = 30


# ------------------------------------------------------------------------------------- users

# A POSIX user name (what useradd takes, plus a machine account's trailing $) or a numeric uid,
# at most 32 characters: the sandbox resolves it from its own /etc/passwd. Empty: the
# template's user.
MAX_USER_NAME = 32
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]{1,10}")


def check_user(name: str) -> str:
    """A request's ``user`` (``""``: the template's), or a 400."""
    if name and (len(name) > MAX_USER_NAME or not _USER_NAME.fullmatch(name)):
        raise InvalidRequest(
            f"invalid user {name[:40]!r}: a user name of the sandbox (letters, digits, _ . -; "
            f"at most {MAX_USER_NAME} characters) or a numeric uid"
        )
    return name


UserName = Annotated[
    str,
    AfterValidator(check_user),
    Field(description="run as this user of the sandbox (its /etc/passwd); empty: the template's user"),
]


# ------------------------------------------------------------------------------------- bodies


class ExecBody(StrictBody):
    nul_ok_fields = frozenset({"stdin"})
    cmd: str = Field(default="", description="the executable (no shell); use /bin/sh -c for one")
    args: list[str] = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)
    cwd: str = ""
    timeout_sec: int = Field(
        default=0,
        le=INT32_MAX,
        description="seconds; <= 0 means the agent's default (30); at most the platform's "
        "maximum (WARREN_MAX_EXEC_TIMEOUT_S, default 3600)",
    )
    stdin: str | None = Field(default=None, description="text fed to the process's stdin")
    stdin_b64: str | None = Field(default=None, description="bytes (base64) fed to stdin")
    user: UserName = ""


class ExecResult(BaseModel):
    sandbox_id: str
    cmd: str
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    encoding: str = Field(description='"utf-8", or "base64" when stdout or stderr is not UTF-8')


class StartProcessBody(StrictBody):
    cmd: str = ""
    args: list[str] = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)
    cwd: str = ""
    tag: str = ""
    timeout_sec: int = Field(default=0, le=INT32_MAX, description="seconds; 0 = no limit")
    user: UserName = ""


class ProcessInfo(BaseModel):
    pid: int
    tag: str | None = None
    cmd: str
    args: list[str]
    cwd: str = ""


class SignalBody(StrictBody):
    signal: int | str = Field(default="SIGTERM", description='a number or a name such as "SIGKILL"')


class StdinBody(StrictBody):
    nul_ok_fields = frozenset({"data"})
    data: str | None = None
    data_b64: str | None = None
    close: bool = Field(default=False, description="close stdin after writing data (if any)")


def parse_body(model: type[M], raw: bytes) -> M:
    """Parse a JSON body into ``model`` (InvalidRequest with the API's messages)."""
    data = (
        json_object(raw, "invalid JSON body", "invalid JSON body: expected an object") if raw.strip() else {}
    )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        if first.get("type") == "extra_forbidden":
            raise InvalidRequest(f"unknown field: {where}") from e
        raise InvalidRequest(f"invalid {where}: {first.get('msg', 'invalid value')}") from e


async def target_and_body(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    model: type[M],
    raw_body: bytes,
) -> tuple[sandbox_access.Target, M]:
    """The running sandbox a call reaches, and the call's body, in that order (a missing
    sandbox answers before a bad body)."""
    return await sandbox_access.target(engine, pool, ctx, sandbox_id), parse_body(model, raw_body)


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
        return pb.ProcessSelector(tag=check_text(pid_or_tag, "process tag"))
    pid = int(pid_or_tag)
    if not 0 < pid <= _PID_MAX:
        raise InvalidRequest(f"pid must be in 1..{_PID_MAX}")
    return pb.ProcessSelector(pid=pid)


async def after_start(started: asyncio.Event) -> None:
    """Hold what follows the start until the agent answered it. An agent that refuses the start
    (no such command, no such user) ends the call at once, and a message written after that
    makes grpc.aio report INTERNAL "Internal error from Core" instead of the agent's status
    (grpc/grpc#36066); a refused start never releases this, and the call's end stops it."""
    await started.wait()


def check_timeout(timeout_sec: int, max_timeout: int) -> int:
    """A request's ``timeout_sec`` within the platform's maximum (InvalidRequest above it)."""
    if timeout_sec > max_timeout:
        raise InvalidRequest(f"timeout_sec must be at most {max_timeout} seconds (the platform's maximum)")
    return timeout_sec


def parse_command(model: type[C], raw: bytes, max_timeout: int) -> C:
    """A command body (``cmd`` required, ``timeout_sec`` within the platform's maximum)."""
    body = parse_body(model, raw)
    if not body.cmd:
        raise InvalidRequest("cmd is required")
    check_timeout(body.timeout_sec, max_timeout)
    return body


# ---------------------------------------------------------------------- background processes


async def start_process(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    raw_body: bytes,
    *,
    max_timeout: int,
) -> ProcessInfo:
    """Start a background process (it outlives this request); its output can be attached to."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_command(StartProcessBody, raw_body, max_timeout)
    if body.timeout_sec < 0:  # never above the maximum too: the order of the messages holds
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
        user=body.user,
    )
    done = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ExecStreamRequest]:
        yield pb.ExecStreamRequest(start=start)
        await done.wait()

    call = client.stub.ExecStream(requests(), timeout=60)
    try:
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
    sandbox_access.touch_later(engine, tgt.uuid, seen=tgt.sandbox.last_active_at)
    return ProcessInfo(pid=pid, tag=body.tag or None, cmd=body.cmd, args=body.args, cwd=body.cwd)


async def list_processes(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> list[ProcessInfo]:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    resp = await tgt.client().stub.ListProcesses(pb.ListProcessesRequest(sandbox_id=tgt.sid), timeout=30)
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
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, SignalBody, raw_body)
    sig = parse_signal(body.signal)
    req = pb.SignalProcessRequest(sandbox_id=tgt.sid, process=selector(pid_or_tag), signal=sig)
    await tgt.client().stub.SignalProcess(req, timeout=30)


async def send_stdin(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    pid_or_tag: str,
    raw_body: bytes,
) -> None:
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, StdinBody, raw_body)
    data = body.data.encode() if body.data is not None else b""
    if body.data_b64 is not None:
        data += decode_b64(body.data_b64, "data_b64")
    if not data and not body.close:
        raise InvalidRequest("data, data_b64 or close is required")
    client, sel = tgt.client(), selector(pid_or_tag)
    if data:
        await client.stub.SendStdin(
            pb.SendStdinRequest(sandbox_id=tgt.sid, process=sel, data=data), timeout=30
        )
    if body.close:
        await client.stub.CloseStdin(pb.CloseStdinRequest(sandbox_id=tgt.sid, process=sel), timeout=30)


__all__ = [
    "ExecBody",
    "ExecResult",
    "ProcessInfo",
    "check_timeout",
    "check_user",
    "list_processes",
    "parse_command",
    "send_stdin",
    "signal_process",
    "start_process",
    "target_and_body",
]
