"""E2B envd's processes (docs/e2b.md §3.1) over the agent's exec and terminal RPCs: the rules
the ``process.Process`` handlers translate to. The streams (``Start``, ``Connect``) are in
``envd_process_stream``; this module holds what they share and the unary verbs.

Every process E2B starts is a Warren **background** process (it outlives its stream) or a
terminal; both are addressed by the sandbox's own pid, so a pid can only ever reach a process
of the sandbox the call's token is for.
"""

from __future__ import annotations

import contextlib
import signal as _signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.hosts.client_pool import DEFAULT_TIMEOUT_S, HostClient, HostClientPool
from warren.cp.services import envd_input
from warren.cp.services.env import validate_env
from warren.cp.services.exec import check_user
from warren.cp.services.sandboxes import Found
from warren.cp.services.strict import check_text, optional_text_value
from warren.errors import AgentError, InvalidRequest, NotFound, ServiceUnavailable
from warren.rpc import guest_kind
from warren.rpc import hostagent_pb2 as pb

# E2B's default account: a call without a user runs as it when the template has it, else as the
# template's own user (what envd >= 0.4.0 does with its default user).
DEFAULT_USER = "user"
MAX_INPUT = 1 << 20  # one SendInput / StreamInput message's bytes (the agent's terminal cap)
MAX_ARGS = 4096
MAX_ARGS_BYTES = 1 << 20  # args together: what execve(2) could take, roughly
MAX_DIM = 1000  # terminal columns and rows (the guest's bound)
PID_MAX = 2**31 - 1  # the agent's pids are int32
# The two signals envd's SendSignal knows (its proto's enum).
SIGNALS = {"SIGNAL_SIGTERM": int(_signal.SIGTERM), "SIGNAL_SIGKILL": int(_signal.SIGKILL)}

# How Go's os.ProcessState names a signal in "signal: <name>" (what envd reports as status).
_SIGNAL_NAMES = {
    _signal.SIGHUP: "hangup",
    _signal.SIGINT: "interrupt",
    _signal.SIGQUIT: "quit",
    _signal.SIGILL: "illegal instruction",
    _signal.SIGTRAP: "trace/breakpoint trap",
    _signal.SIGABRT: "aborted",
    _signal.SIGBUS: "bus error",
    _signal.SIGFPE: "floating point exception",
    _signal.SIGKILL: "killed",
    _signal.SIGUSR1: "user defined signal 1",
    _signal.SIGSEGV: "segmentation fault",
    _signal.SIGUSR2: "user defined signal 2",
    _signal.SIGPIPE: "broken pipe",
    _signal.SIGALRM: "alarm clock",
    _signal.SIGTERM: "terminated",
}


# ------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Started:
    pid: int


@dataclass(frozen=True)
class Output:
    kind: Literal["stdout", "stderr", "pty"]
    data: bytes


@dataclass(frozen=True)
class Ended:
    """envd's end event: ``exit_code`` -1 and ``exited`` False when a signal ended it."""

    exit_code: int
    exited: bool
    status: str  # "exit status N" | "signal: killed" (Go's wording, which envd passes on)
    error: str | None


@dataclass(frozen=True)
class Keepalive:
    pass


ProcessEvent = Started | Output | Ended | Keepalive


def ended(exit_code: int, error: str = "") -> Ended:
    """A Warren exit (negative: ``-signal``) as envd reports it. A non-zero end carries its
    status as ``error`` too, as envd's does (Go's ``cmd.Wait`` error)."""
    if exit_code < 0:
        sig = -exit_code
        try:
            name = _SIGNAL_NAMES.get(_signal.Signals(sig), f"signal {sig}")
        except ValueError:
            name = f"signal {sig}"
        status, code, exited = f"signal: {name}", -1, False
    else:
        status, code, exited = f"exit status {exit_code}", exit_code, True
    if code == 0 and not error:
        return Ended(0, True, status, None)
    return Ended(code, exited, status, error if error and code == 0 else status)


# ---------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Selector:
    pid: int = 0
    tag: str = ""

    def pb(self) -> pb.ProcessSelector:
        return pb.ProcessSelector(pid=self.pid) if self.pid else pb.ProcessSelector(tag=self.tag)


def selector(pid: object, tag: object) -> Selector:
    """A process by pid (1..2^31-1) or by tag, or a 400."""
    if pid is not None:
        if isinstance(pid, bool) or not isinstance(pid, int | str) or not str(pid).isascii():
            raise InvalidRequest("pid must be an integer")
        if isinstance(pid, str) and not pid.isdigit():
            raise InvalidRequest("pid must be an integer")
        n = int(pid)
        if not 0 < n <= PID_MAX:
            raise InvalidRequest(f"pid must be in 1..{PID_MAX}")
        return Selector(pid=n)
    if isinstance(tag, str) and tag:
        return Selector(tag=check_text(tag, "process tag"))
    raise InvalidRequest("a process is selected by pid or tag")


@dataclass(frozen=True)
class ProcessSpec:
    """One ``Start``: the command and how it runs (checked by :func:`spec`)."""

    cmd: str
    args: list[str]
    env: dict[str, str]
    cwd: str
    tag: str
    stdin: bool
    user: str | None  # None: :data:`DEFAULT_USER` where the template has it
    pty: tuple[int, int] | None  # (cols, rows): run on a terminal
    timeout_ms: int | None  # the process's lifetime (Connect-Timeout-Ms); None: none
    keepalive_s: float | None = None


def spec(
    *,
    cmd: object,
    args: object,
    env: object,
    cwd: object,
    tag: object,
    stdin: bool,
    user: str | None,
    pty: tuple[object, object] | None,
    timeout_ms: int | None,
    keepalive_s: float | None,
) -> ProcessSpec:
    """A ``Start`` request's fields, checked (400 for what the platform would refuse)."""
    if not isinstance(cmd, str) or not cmd:
        raise InvalidRequest("process.cmd is required")
    arg_list = args if args is not None else []
    if not isinstance(arg_list, list) or not all(isinstance(a, str) for a in arg_list):
        raise InvalidRequest("process.args must be a list of strings")
    if len(arg_list) > MAX_ARGS or sum(len(a.encode()) + 1 for a in arg_list) > MAX_ARGS_BYTES:
        raise InvalidRequest(f"process.args: at most {MAX_ARGS} arguments and {MAX_ARGS_BYTES >> 10} KiB")
    size = None
    if pty is not None:
        size = (_dim(pty[0], "cols"), _dim(pty[1], "rows"))
    return ProcessSpec(
        cmd=check_text(cmd, "process.cmd"),
        args=[check_text(a, "process.args") for a in arg_list],
        env=validate_env(env if env is not None else {}),
        cwd=optional_text_value(cwd, "process.cwd"),
        tag=optional_text_value(tag, "tag"),
        stdin=stdin,
        user=check_user(user) or None if user is not None else None,
        pty=size,
        timeout_ms=timeout_ms,
        keepalive_s=keepalive_s,
    )


def _dim(v: object, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM:
        raise InvalidRequest(f"pty.size.{what} must be an integer in 1..{MAX_DIM}")
    return v


def parse_signal(value: object) -> int:
    """envd's signal enum (by name or number): SIGTERM or SIGKILL only."""
    if isinstance(value, str) and value in SIGNALS:
        return SIGNALS[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in SIGNALS.values():
        return value
    raise InvalidRequest("signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL")


# ---------------------------------------------------------------------------------- sandbox


@dataclass(frozen=True)
class EnvdSandbox:
    """The sandbox an envd call reaches (already authenticated and looked up)."""

    engine: AsyncEngine
    pool: HostClientPool
    found: Found

    @property
    def sid(self) -> str:
        return self.found.sandbox.id

    def client(self) -> HostClient:
        if self.found.sandbox.status != "running":
            raise gone(self.sid)
        if not self.found.host_known or not self.found.host_address:
            raise ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
        return self.found.host_client(self.pool)


def is_not_found(e: AgentError) -> bool:
    return (e.rpc_code or "").upper() == "NOT_FOUND"


class SandboxGone(ServiceUnavailable):
    """The sandbox is not running (paused, killed, killed meanwhile): E2B's SDK probes
    ``/health`` on an unavailable call and reads its "was not found" as "not running"."""

    code = "sandbox_gone"


def gone(sandbox_id: str) -> SandboxGone:
    return SandboxGone(f"sandbox {sandbox_id} was not found")


@contextlib.contextmanager
def sandbox_gone(sbx: EnvdSandbox) -> Iterator[None]:
    """The agent's "no such sandbox" / "not running" (a kill raced this call) as :func:`gone`,
    never as a process that was not found."""
    try:
        yield
    except AgentError as e:
        code = (e.rpc_code or "").upper()
        if code in ("NOT_FOUND", "FAILED_PRECONDITION") and e.message.startswith(f"sandbox {sbx.sid} "):
            raise gone(sbx.sid) from None
        raise


# ------------------------------------------------------------------------------- unary verbs


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    tag: str
    cmd: str
    args: list[str]


async def list_running(sbx: EnvdSandbox) -> list[ProcessInfo]:
    """The sandbox's running processes (exited background ones, kept for attach, are not)."""
    with sandbox_gone(sbx):
        req = pb.ListProcessesRequest(sandbox_id=sbx.sid)
        resp = await sbx.client().stub.ListProcesses(req, timeout=DEFAULT_TIMEOUT_S)
        return [ProcessInfo(p.pid, p.tag, p.cmd, list(p.args)) for p in resp.processes if p.running]


async def send_input(
    sbx: EnvdSandbox, sel: Selector, data: bytes, *, pty: bool, team: uuid.UUID | None, max_streams: int
) -> None:
    """Bytes to a process's stdin, or typed into its terminal; bounded in what may be queued
    for it (``envd_input``: 429 ``stdin_full`` past it)."""
    with sandbox_gone(sbx):
        if len(data) > MAX_INPUT:
            raise InvalidRequest(f"one input message is at most {MAX_INPUT >> 10} KiB")
        client = sbx.client()
        if pty:
            pid = _terminal_pid(sel)

            async def send(piece: bytes) -> None:
                ctl = pb.PtyControlRequest(sandbox_id=sbx.sid, pid=pid, input=piece)
                with _exited_not_found(sel):
                    await client.stub.PtyControl(ctl, timeout=DEFAULT_TIMEOUT_S)

        else:

            async def send(piece: bytes) -> None:
                req = pb.SendStdinRequest(sandbox_id=sbx.sid, process=sel.pb(), data=piece)
                with _exited_not_found(sel):
                    await client.stub.SendStdin(req, timeout=DEFAULT_TIMEOUT_S)

        key = (sbx.sid, sel.pid or sel.tag)
        await envd_input.feed(key, team, data, send, max_streams=max_streams)


@contextlib.contextmanager
def _exited_not_found(sel: Selector) -> Iterator[None]:
    """The guest keeps an exited process or terminal (for a late attach or connect) and refuses
    its input (:func:`input_refused_as_exited`); envd has removed it by then: not found, as a
    kill of it answers. Warren's own API keeps the agent's 400."""
    try:
        yield
    except AgentError as e:
        if input_refused_as_exited(e):
            which = f"pid {sel.pid}" if sel.pid else f"tag {sel.tag}"
            raise NotFound(f"process with {which} not found") from None
        raise


def input_refused_as_exited(e: AgentError) -> bool:
    """Input refused because its process or terminal has exited: the guest's kind ``exited``,
    which the agent sends as data. Agents and guests before session 29 said so in words only,
    INVALID_ARGUMENT "… has exited": an older agent sends no kind (the CP is upgraded first,
    docs/operations.md), and a sandbox an upgraded agent re-adopted keeps its older guest (kind
    ``invalid_argument``). Their words can no longer change, so for them alone they are read."""
    if e.guest_kind == guest_kind.EXITED:
        return True
    older = e.guest_kind is None or e.guest_kind == "invalid_argument"
    return older and e.rpc_code == "INVALID_ARGUMENT" and "has exited" in e.message


async def close_stdin(sbx: EnvdSandbox, sel: Selector) -> None:
    with sandbox_gone(sbx):
        req = pb.CloseStdinRequest(sandbox_id=sbx.sid, process=sel.pb())
        await sbx.client().stub.CloseStdin(req, timeout=DEFAULT_TIMEOUT_S)


async def send_signal(sbx: EnvdSandbox, sel: Selector, sig: int) -> None:
    """A signal to a process's group, else to the terminal of that pid; NotFound when neither
    runs."""
    with sandbox_gone(sbx):
        client = sbx.client()
        try:
            req = pb.SignalProcessRequest(sandbox_id=sbx.sid, process=sel.pb(), signal=sig)
            await client.stub.SignalProcess(req, timeout=DEFAULT_TIMEOUT_S)
            return
        except AgentError as e:
            if not is_not_found(e) or not sel.pid:
                raise
        try:
            ctl = pb.PtyControlRequest(sandbox_id=sbx.sid, pid=sel.pid, signal=sig)
            await client.stub.PtyControl(ctl, timeout=DEFAULT_TIMEOUT_S)
        except AgentError as e:
            if is_not_found(e):
                raise NotFound(f"process with pid {sel.pid} not found") from None
            raise


async def resize(sbx: EnvdSandbox, sel: Selector, cols: object, rows: object) -> None:
    with sandbox_gone(sbx):
        size = pb.PtySize(cols=_dim(cols, "cols"), rows=_dim(rows, "rows"))
        ctl = pb.PtyControlRequest(sandbox_id=sbx.sid, pid=_terminal_pid(sel), resize=size)
        await sbx.client().stub.PtyControl(ctl, timeout=DEFAULT_TIMEOUT_S)


MAX_ENVIRON = 1 << 20  # the environment read back (execve's own limit is lower)


async def sandbox_env(sbx: EnvdSandbox) -> dict[str, str]:
    """envd's ``GET /envs``: the environment every command of the sandbox starts from (the
    template's and the create's variables over the platform's defaults), as its guest, PID 1,
    holds it."""
    with sandbox_gone(sbx):
        req = pb.ReadFileRequest(sandbox_id=sbx.sid, path="/proc/1/environ", user="root")
        resp = await sbx.client().stub.ReadFile(req, timeout=DEFAULT_TIMEOUT_S)
        env: dict[str, str] = {}
        for item in resp.content[:MAX_ENVIRON].split(b"\0"):
            name, eq, value = item.partition(b"=")
            if eq and name:
                env[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return env


def _terminal_pid(sel: Selector) -> int:
    if not sel.pid:
        raise NotFound(f"no terminal with tag {sel.tag!r} (terminals are selected by pid)")
    return sel.pid


__all__ = [
    "DEFAULT_USER",
    "Ended",
    "EnvdSandbox",
    "Keepalive",
    "Output",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessSpec",
    "SandboxGone",
    "Selector",
    "Started",
    "close_stdin",
    "ended",
    "list_running",
    "parse_signal",
    "resize",
    "sandbox_env",
    "selector",
    "send_input",
    "send_signal",
    "spec",
]
