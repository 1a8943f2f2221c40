"""``sbx.commands``: run commands, stream their output, drive background processes.

A command given as a string runs through ``/bin/sh -c`` (like E2B); a list runs as argv with no
shell. A plain ``run`` is one HTTP request; output callbacks, interactive stdin, background
processes and runs without a time limit use the exec WebSocket.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, cast, overload

from warren.sdk._exceptions import (
    CommandExitError,
    NotFoundError,
    StreamError,
    WarrenError,
    WarrenTimeoutError,
)
from warren.sdk._exec_frames import (
    STDIN_CHUNK,
    decode_exec_response,
    frame_bytes,
    raise_frame_error,
    stdin_frame,
    stdin_frames,
)
from warren.sdk._models import CommandResult, ProcessInfo
from warren.sdk._transport import DEFAULT, Call, Http, Op, WsClose, WsOpen, WsRecv, WsSend, awaiting, blocking
from warren.url_path import segment

if TYPE_CHECKING:
    from warren.sdk._transport import AsyncTransport, SyncTransport

__all__ = ["AsyncCommandHandle", "AsyncCommands", "CommandHandle", "Commands", "RunOptions"]

# Used when `timeout` is not given, like E2B's default.
DEFAULT_COMMAND_TIMEOUT = 60.0
OutputCallback = Callable[[str], Any]
BytesCallback = Callable[[bytes], Any]
Stdin = bool | str | bytes | None


class RunOptions(TypedDict, total=False):
    envs: Mapping[str, str] | None
    cwd: str | None
    # Seconds the process may run before it is killed; None = no limit.
    timeout: float | None
    on_stdout: OutputCallback | None
    on_stderr: OutputCallback | None
    # The output's bytes as they arrive, not decoded (binary output stays whole).
    on_stdout_bytes: BytesCallback | None
    on_stderr_bytes: BytesCallback | None
    # True keeps stdin open for send_stdin(); str/bytes are written then stdin is closed.
    stdin: Stdin
    tag: str | None
    # A user of the sandbox (its /etc/passwd) to run as; None: the template's user (root unless
    # the template says otherwise).
    user: str | None
    # Raise CommandExitError when the exit code is not 0.
    check: bool
    # Seconds for the HTTP request itself (stretched to cover `timeout`).
    request_timeout: float | None
    # False: output reaches only the callbacks, and the result's stdout/stderr stay empty (a
    # command that prints without end holds no memory here; `warren sandbox exec` runs so).
    keep_output: bool


def argv(cmd: str | Sequence[str]) -> tuple[str, list[str]]:
    """A string is a shell command line; a sequence is argv as is."""
    if isinstance(cmd, str):
        return "/bin/sh", ["-c", cmd]
    parts = list(cmd)
    if not parts:
        raise ValueError("cmd must not be empty")
    return parts[0], parts[1:]


class _HandleBase:
    """A running command: its stream, the output so far and, at the end, its exit."""

    def __init__(
        self,
        transport: Any,
        sandbox_id: str,
        conn: Any,
        pid: int,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
        keep_output: bool = True,
        on_stdout_bytes: BytesCallback | None = None,
        on_stderr_bytes: BytesCallback | None = None,
    ) -> None:
        self._transport = transport
        self._sandbox_id = sandbox_id
        self._conn = conn
        self.pid = pid
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_bytes = {"stdout": on_stdout_bytes, "stderr": on_stderr_bytes}
        self._check = check
        self._keep = keep_output
        # Per stream: a character cut between two frames reaches the callback whole.
        self._text = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("stdout", "stderr")}
        self._out = bytearray()
        self._err = bytearray()
        self._result: CommandResult | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} sandbox={self._sandbox_id}>"

    @property
    def stdout(self) -> str:
        """Output received so far."""
        return self._out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """Error output received so far."""
        return self._err.decode("utf-8", "replace")

    @property
    def exit_code(self) -> int | None:
        """The exit code once ``wait()`` has seen the command end; None before."""
        return self._result.exit_code if self._result else None

    def _wait(self) -> Op[CommandResult]:
        """Wait for the command to end and return its result; output callbacks fire as the
        output arrives. Raises WarrenTimeoutError at its time limit, CommandExitError for a
        non-zero exit when it was started with ``check=True``.

        Example::

            h = sbx.commands.run("sleep 1; echo done", background=True)
            print(h.wait().stdout)   # 'done\\n'
        """
        if self._result is None:
            if self._conn is None:
                raise StreamError(
                    "this handle is disconnected; use commands.connect(pid)", code="disconnected"
                )
            while True:
                frame = yield WsRecv(self._conn)
                if frame is None:
                    self._conn = None
                    raise StreamError(
                        "the exec stream closed before the command exited", code="stream_closed"
                    )
                kind = frame.get("type")
                if kind in ("stdout", "stderr"):
                    data = frame_bytes(frame)
                    if self._keep:
                        (self._out if kind == "stdout" else self._err).extend(data)
                    yield from self._deliver(kind, data)
                elif kind == "exit":
                    for stream in ("stdout", "stderr"):
                        yield from self._deliver(stream, b"", final=True)
                    error = frame.get("error") or None
                    self._result = CommandResult.from_bytes(
                        bytes(self._out), bytes(self._err), int(frame.get("exit_code", -1)), error=error
                    )
                    yield WsClose(self._conn)
                    self._conn = None
                    if error and frame.get("reason") == "timeout":
                        raise WarrenTimeoutError(f"command timed out: {error}", code="timeout")
                    break
                elif kind == "error":
                    yield WsClose(self._conn)
                    self._conn = None
                    raise_frame_error(frame)
        if self._check and self._result.exit_code != 0:
            raise CommandExitError(self._result)
        return self._result

    def _deliver(self, kind: str, data: bytes, *, final: bool = False) -> Op[None]:
        """``data`` to the stream's callbacks: its bytes as they came, and its text (what
        completes a character now)."""
        if data and (raw := self._on_bytes[kind]) is not None:
            yield Call(raw, (data,))
        cb = self._on_stdout if kind == "stdout" else self._on_stderr
        if cb is not None and (text := self._text[kind].decode(data, final)):
            yield Call(cb, (text,))

    def _send_stdin(self, data: str | bytes) -> Op[None]:
        """Write ``data`` (text or bytes) to the command's stdin; it must have been started
        with ``stdin=True``.

        Example::

            h = sbx.commands.run("cat", background=True, stdin=True)
            h.send_stdin("ping\\n")
        """
        if self._conn is not None:
            for frame in stdin_frames(data):
                yield WsSend(self._conn, frame)
            return
        yield from _send_stdin_rest(self._sandbox_id, self.pid, data)

    def _close_stdin(self) -> Op[None]:
        """Close the command's stdin: it reads end-of-file.

        Example::

            h.close_stdin()
            print(h.wait().stdout)
        """
        if self._conn is not None:
            yield WsSend(self._conn, {"type": "close_stdin"})
            return
        yield Http(
            "POST", f"/v1/sandboxes/{self._sandbox_id}/processes/{self.pid}/stdin", json={"close": True}
        )

    def _kill(self) -> Op[bool]:
        """SIGKILL the process. False when it had already exited.

        Example::

            h.kill()
        """
        if self._result is not None:
            return False
        return (yield from _signal(self._sandbox_id, self.pid, 9))

    def _disconnect(self) -> Op[None]:
        """Stop receiving output; a background process keeps running (``commands.connect(pid)``
        attaches again).

        Example::

            pid = h.pid
            h.disconnect()
        """
        if self._conn is not None:
            yield WsSend(self._conn, {"type": "stop"})
            yield WsClose(self._conn)
            self._conn = None


def _send_then_close_stdin(conn: Any, data: str | bytes) -> Op[None]:
    """A start frame's stdin sent after it; a process that exits first drops the rest, as it
    would drop a start frame's stdin it did not read."""
    try:
        for frame in stdin_frames(data):
            yield WsSend(conn, frame)
        yield WsSend(conn, {"type": "close_stdin"})
    except StreamError as e:
        if e.code != "stream_closed":
            raise


def _send_stdin_rest(sandbox_id: str, pid: int | str, data: str | bytes) -> Op[None]:
    frame = stdin_frame(data)
    frame.pop("type")
    yield Http("POST", f"/v1/sandboxes/{sandbox_id}/processes/{segment(pid, 'process')}/stdin", json=frame)


def _signal(sandbox_id: str, pid: int | str, signal: int) -> Op[bool]:
    try:
        path = f"/v1/sandboxes/{sandbox_id}/processes/{segment(pid, 'process')}/signal"
        yield Http("POST", path, json={"signal": signal})
    except NotFoundError:
        return False
    return True


class CommandHandle(_HandleBase):
    """A background (or attached) command. ``wait()`` returns its :class:`CommandResult`."""

    _transport: SyncTransport
    wait = blocking(_HandleBase._wait)
    send_stdin = blocking(_HandleBase._send_stdin)
    close_stdin = blocking(_HandleBase._close_stdin)
    kill = blocking(_HandleBase._kill)
    disconnect = blocking(_HandleBase._disconnect)


class AsyncCommandHandle(_HandleBase):
    """A background (or attached) command of an :class:`~warren.AsyncSandbox`:
    ``await h.wait()`` returns its :class:`CommandResult`."""

    _transport: AsyncTransport
    wait = awaiting(_HandleBase._wait)
    send_stdin = awaiting(_HandleBase._send_stdin)
    close_stdin = awaiting(_HandleBase._close_stdin)
    kill = awaiting(_HandleBase._kill)
    disconnect = awaiting(_HandleBase._disconnect)


class _CommandsBase:
    _handle_cls: type[_HandleBase]

    def __init__(self, transport: Any, sandbox_id: str) -> None:
        self._transport = transport
        self._sandbox_id = sandbox_id

    def _run(
        self, cmd: str | Sequence[str], background: bool = False, **opts: Unpack[RunOptions]
    ) -> Op[CommandResult | _HandleBase]:
        timeout = opts.get("timeout", DEFAULT_COMMAND_TIMEOUT)
        stdin = opts.get("stdin")
        streaming = (
            background
            or opts.get("on_stdout") is not None
            or opts.get("on_stderr") is not None
            or opts.get("on_stdout_bytes") is not None
            or opts.get("on_stderr_bytes") is not None
            or stdin is True
            or timeout is None
            or opts.get("tag") is not None
        )
        if not streaming:
            return (yield from self._run_unary(cmd, timeout, opts))
        handle = yield from self._start(cmd, background, opts)
        if background:
            return handle
        return (yield from handle._wait())

    def _run_unary(
        self, cmd: str | Sequence[str], timeout: float | None, opts: RunOptions
    ) -> Op[CommandResult]:
        exe, args = argv(cmd)
        body: dict[str, Any] = {"cmd": exe, "args": args}
        if opts.get("envs"):
            body["env"] = dict(opts["envs"] or {})
        if opts.get("cwd"):
            body["cwd"] = opts["cwd"]
        if opts.get("user"):
            body["user"] = opts["user"]
        timeout_sec = max(1, math.ceil(timeout)) if timeout else 0
        body["timeout_sec"] = timeout_sec
        stdin = opts.get("stdin")
        if isinstance(stdin, (str, bytes)):
            frame = stdin_frame(stdin)
            frame.pop("type")
            body.update({"stdin" if k == "data" else "stdin_b64": v for k, v in frame.items()})
        res = yield Http(
            "POST",
            f"/v1/sandboxes/{self._sandbox_id}/exec",
            json=body,
            timeout=opts.get("request_timeout", DEFAULT),
            # The HTTP deadline must outlast the command's own time limit.
            min_timeout=timeout_sec + 10.0 if timeout_sec else None,
        )
        data = res.json()
        out, err = decode_exec_response(data)
        result = CommandResult.from_bytes(
            out, err, int(data["exit_code"]), duration_ms=data.get("duration_ms")
        )
        if opts.get("check") and result.exit_code != 0:
            raise CommandExitError(result)
        return result

    def _start(self, cmd: str | Sequence[str], background: bool, opts: RunOptions) -> Op[_HandleBase]:
        exe, args = argv(cmd)
        timeout = opts.get("timeout", DEFAULT_COMMAND_TIMEOUT)
        start: dict[str, Any] = {
            "type": "start",
            "cmd": exe,
            "args": args,
            "env": dict(opts.get("envs") or {}),
            "cwd": opts.get("cwd") or "",
            "timeout_sec": max(1, math.ceil(timeout)) if timeout else 0,
            "tag": opts.get("tag") or "",
            "background": background,
        }
        if opts.get("user"):
            start["user"] = opts["user"]
        stdin = opts.get("stdin")
        # Stdin too large for one frame follows the start frame in frames of its own.
        later: str | bytes | None = None
        if isinstance(stdin, (str, bytes)):
            if len(stdin.encode() if isinstance(stdin, str) else stdin) > STDIN_CHUNK:
                later = stdin
            else:
                data = stdin_frame(stdin)
                start["stdin" if "data" in data else "stdin_b64"] = data.get("data", data.get("data_b64"))
        # Without interactive stdin it is closed at once (programs reading it see EOF, not a
        # hang); saying so in the start frame means no race with a process that exits first.
        start["close_stdin"] = stdin is not True and later is None
        conn = yield from self._open(start)
        frame = yield WsRecv(conn)
        pid = yield from _expect_start(conn, frame)
        if later is not None:
            yield from _send_then_close_stdin(conn, later)
        handle = self._handle_cls(
            self._transport,
            self._sandbox_id,
            conn,
            pid,
            on_stdout=opts.get("on_stdout"),
            on_stderr=opts.get("on_stderr"),
            check=bool(opts.get("check")),
            keep_output=opts.get("keep_output", True),
            on_stdout_bytes=opts.get("on_stdout_bytes"),
            on_stderr_bytes=opts.get("on_stderr_bytes"),
        )
        return handle

    def _open(self, first: dict[str, Any]) -> Op[Any]:
        conn = yield WsOpen(f"/v1/sandboxes/{self._sandbox_id}/exec/stream")
        try:
            yield WsSend(conn, first)
        except WarrenError:
            yield WsClose(conn)
            raise
        return conn

    def _connect(
        self, pid: int, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None
    ) -> Op[_HandleBase]:
        """Attach to a running process's output (from now on)."""
        conn = yield from self._open({"type": "attach", "pid": pid})
        frame = yield WsRecv(conn)
        pid = yield from _expect_start(conn, frame)
        return self._handle_cls(
            self._transport, self._sandbox_id, conn, pid, on_stdout=on_stdout, on_stderr=on_stderr
        )

    def _list(self) -> Op[list[ProcessInfo]]:
        """The processes running in the sandbox (pid, tag, command).

        Example::

            for p in sbx.commands.list():
                print(p.pid, p.tag, p.cmd)
        """
        res = yield Http("GET", f"/v1/sandboxes/{self._sandbox_id}/processes")
        return [ProcessInfo.from_json(p) for p in res.json()]

    def _kill(self, pid: int | str) -> Op[bool]:
        """SIGKILL a process by pid or tag. False when there is no such process.

        Example::

            sbx.commands.kill("web")
        """
        return (yield from _signal(self._sandbox_id, pid, 9))

    def _send_signal(self, pid: int | str, signal: int) -> Op[bool]:
        """Send ``signal`` (a number, e.g. ``signal.SIGTERM``) to a process by pid or tag.
        False when there is no such process.

        Example::

            sbx.commands.send_signal("web", signal.SIGTERM)
        """
        return (yield from _signal(self._sandbox_id, pid, signal))

    def _send_stdin(self, pid: int | str, data: str | bytes) -> Op[None]:
        """Write ``data`` to the stdin of a process (by pid or tag) started with ``stdin=True``.

        Example::

            sbx.commands.send_stdin(pid, "quit\\n")
        """
        yield from _send_stdin_rest(self._sandbox_id, pid, data)


def _expect_start(conn: Any, frame: dict[str, Any] | None) -> Op[int]:
    if frame is None:
        raise StreamError("the exec stream closed before the command started", code="stream_closed")
    if frame.get("type") == "start":
        return int(frame["pid"])
    yield WsClose(conn)
    if frame.get("type") == "error":
        raise_frame_error(frame)
    raise StreamError(f"unexpected first frame {frame.get('type')!r}", code="stream_error")


class Commands(_CommandsBase):
    """``sbx.commands`` of a :class:`~warren.Sandbox`."""

    _transport: SyncTransport
    _handle_cls = CommandHandle

    @overload
    def run(
        self, cmd: str | Sequence[str], *, background: Literal[False] = False, **opts: Unpack[RunOptions]
    ) -> CommandResult: ...
    @overload
    def run(
        self, cmd: str | Sequence[str], *, background: Literal[True], **opts: Unpack[RunOptions]
    ) -> CommandHandle: ...
    def run(
        self, cmd: str | Sequence[str], *, background: bool = False, **opts: Unpack[RunOptions]
    ) -> CommandResult | CommandHandle:
        """Run ``cmd`` and wait for it (or, with ``background=True``, return a handle).

        Args:
            cmd: a string runs through ``/bin/sh -c``; a list runs as argv, without a shell.
            background: return a :class:`CommandHandle` at once instead of waiting.
            timeout: seconds the process may run before it is killed (default 60); None = no
                limit.
            envs: extra environment variables; cwd: its working directory (default: the
                template's workdir, else the user's home).
            user: run as this user of the sandbox (``"user"`` on the ``base`` template); its
                uid, groups, ``HOME``, ``USER`` and ``LOGNAME``. Default: the template's user.
            on_stdout, on_stderr: called with text as it arrives.
            on_stdout_bytes, on_stderr_bytes: called with the bytes as they arrive, undecoded.
            stdin: str/bytes are written then stdin is closed; True keeps it open for
                ``send_stdin``.
            tag: a name for the process (``commands.kill(tag)``).
            check: raise CommandExitError when the exit code is not 0.
            request_timeout: seconds for the HTTP request itself (stretched to cover
                ``timeout``).
            keep_output: False keeps no output for the result (only the callbacks see it).

        Example::

            r = sbx.commands.run("echo hi && exit 3")
            print(r.exit_code, r.stdout)   # 3 'hi\\n'
            web = sbx.commands.run(["python3", "-m", "http.server"], background=True, tag="web")
            sbx.commands.run("whoami", user="user").stdout   # 'user\n'
        """
        return cast("CommandResult | CommandHandle", self._transport.run(self._run(cmd, background, **opts)))

    def connect(
        self, pid: int, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None
    ) -> CommandHandle:
        """Attach to a running process's output (from now on).

        Args:
            pid: the process's pid (``commands.list()`` shows them).
            on_stdout, on_stderr: called with text as it arrives.

        Example::

            h = sbx.commands.connect(pid, on_stdout=print)
            h.wait()
        """
        return cast(CommandHandle, self._transport.run(self._connect(pid, on_stdout, on_stderr)))

    list = blocking(_CommandsBase._list)
    kill = blocking(_CommandsBase._kill)
    send_signal = blocking(_CommandsBase._send_signal)
    send_stdin = blocking(_CommandsBase._send_stdin)


class AsyncCommands(_CommandsBase):
    """``sbx.commands`` of an :class:`~warren.AsyncSandbox`."""

    _transport: AsyncTransport
    _handle_cls = AsyncCommandHandle

    @overload
    async def run(
        self, cmd: str | Sequence[str], *, background: Literal[False] = False, **opts: Unpack[RunOptions]
    ) -> CommandResult: ...
    @overload
    async def run(
        self, cmd: str | Sequence[str], *, background: Literal[True], **opts: Unpack[RunOptions]
    ) -> AsyncCommandHandle: ...
    async def run(
        self, cmd: str | Sequence[str], *, background: bool = False, **opts: Unpack[RunOptions]
    ) -> CommandResult | AsyncCommandHandle:
        """Run ``cmd``; the arguments are those of :meth:`Commands.run`.

        Example::

            r = await sbx.commands.run("echo hi")
            h = await sbx.commands.run("sleep 5", background=True)
        """
        result = await self._transport.run(self._run(cmd, background, **opts))
        return cast("CommandResult | AsyncCommandHandle", result)

    async def connect(
        self, pid: int, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None
    ) -> AsyncCommandHandle:
        """Attach to a running process's output (see :meth:`Commands.connect`).

        Example::

            h = await sbx.commands.connect(pid, on_stdout=print)
        """
        return cast(AsyncCommandHandle, await self._transport.run(self._connect(pid, on_stdout, on_stderr)))

    list = awaiting(_CommandsBase._list)
    kill = awaiting(_CommandsBase._kill)
    send_signal = awaiting(_CommandsBase._send_signal)
    send_stdin = awaiting(_CommandsBase._send_stdin)
