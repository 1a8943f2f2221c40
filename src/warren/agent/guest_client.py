"""Host-side asyncio client for the in-sandbox guest agent (``warren/guest/guest.py``).

One request per unix-socket connection; the framing is described in
``warren/guest/PROTOCOL.md``. Every failure surfaces as :class:`GuestError` with a machine
``kind``: the guest's own kinds (``not_found``, ``invalid_argument``, ``is_a_directory``,
``not_a_directory``, ``exists``, ``permission``, ``no_space``, ``internal``) plus ``unavailable``
(cannot connect, or the guest hung up) and ``timeout`` (the client gave up waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

# Frame kinds, see PROTOCOL.md. A frame is a 4-byte big-endian payload length, a kind byte,
# and the payload.
K_REQ = 1
K_DATA = 2
K_END = 3
K_RESULT = 4
K_ERROR = 5
K_EVENT = 6
K_STDOUT = 7
K_STDERR = 8
K_SIGNAL = 9

_HDR = 5
# The guest refuses inbound frames over 8 MiB; stay well below so big writes stream smoothly.
_MAX_OUT_CHUNK = 1 << 20
_MAX_IN_FRAME = 256 << 20  # a huge `list` result is the largest legitimate frame
_STREAM_LIMIT = 1 << 20  # asyncio StreamReader buffer: bounds memory while reading a file

GuestErrorKind = str


class GuestError(Exception):
    """An error reported by the guest, or the guest being unreachable."""

    def __init__(self, kind: GuestErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool


@dataclass
class ExecEvent:
    kind: Literal["start", "stdout", "stderr", "exit", "error"]
    pid: int = 0
    data: bytes = b""
    exit_code: int = 0
    error: str = ""
    timed_out: bool = False


@dataclass
class EntryInfo:
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: float
    symlink_target: str | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> EntryInfo:
        return cls(
            name=d["name"],
            path=d["path"],
            type=d["type"],
            size=d["size"],
            mode=d["mode"],
            permissions=d["permissions"],
            owner=d["owner"],
            group=d["group"],
            modified_time=d["modified_time"],
            symlink_target=d.get("symlink_target"),
        )


@dataclass
class ProcessInfo:
    pid: int
    tag: str
    cmd: str
    args: list[str]
    running: bool
    exit_code: int | None


def _frame(kind: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(4, "big") + bytes((kind,)) + payload


def _jdump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _selector(selector: int | str) -> dict[str, Any]:
    if isinstance(selector, bool) or not isinstance(selector, int | str):
        raise TypeError("a process selector is a pid (int) or a tag (str)")
    return {"pid": selector} if isinstance(selector, int) else {"tag": selector}


def _error_from(payload: bytes) -> GuestError:
    try:
        d = json.loads(payload)
        return GuestError(str(d.get("kind", "internal")), str(d.get("message", "")))
    except (ValueError, AttributeError):
        return GuestError("internal", f"malformed error frame: {payload[:200]!r}")


class _Conn:
    """One connection = one request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> _Conn:
        # The socket's directory is the sandbox's /run/warren, writable by sandbox root: it can
        # replace the socket with a symlink, which connect(2) would follow *on the host* (to
        # another sandbox's guest, or any host socket). So pin the inode without following a
        # symlink, check it is a socket, and connect through /proc/self/fd.
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise GuestError("unavailable", f"cannot connect to guest at {path}: {e}") from e
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise GuestError("unavailable", f"cannot connect to guest at {path}: not a socket")
            reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}", limit=_STREAM_LIMIT)
        except OSError as e:
            # ENOENT (not yet started / gone), ECONNREFUSED (between bind and listen, or dead).
            raise GuestError("unavailable", f"cannot connect to guest at {path}: {e}") from e
        finally:
            os.close(fd)
        return cls(reader, writer)

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.writer.write(_frame(kind, payload))

    def send_data(self, data: bytes) -> None:
        for i in range(0, len(data), _MAX_OUT_CHUNK):
            self.send(K_DATA, data[i : i + _MAX_OUT_CHUNK])

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise GuestError("unavailable", f"guest connection lost: {e}") from e

    async def recv(self) -> tuple[int, bytes]:
        try:
            hdr = await self.reader.readexactly(_HDR)
            n = int.from_bytes(hdr[:4], "big")
            if n > _MAX_IN_FRAME:
                raise GuestError("internal", f"guest sent an oversized frame ({n} bytes)")
            payload = await self.reader.readexactly(n) if n else b""
        except asyncio.IncompleteReadError as e:
            raise GuestError("unavailable", "guest closed the connection mid-response") from e
        except (ConnectionError, OSError) as e:
            raise GuestError("unavailable", f"guest connection lost: {e}") from e
        return hdr[4], payload

    async def result(self) -> dict[str, Any]:
        kind, payload = await self.recv()
        if kind == K_RESULT:
            out: dict[str, Any] = json.loads(payload)
            return out
        if kind == K_ERROR:
            raise _error_from(payload)
        raise GuestError("internal", f"unexpected frame kind {kind} (wanted a result)")

    def close(self) -> None:
        # The guest treats EOF as "client gone"; no need to wait for the close handshake.
        self.writer.close()


class ExecSession:
    """A running command's event stream plus its stdin / signal controls.

    Iterate it for :class:`ExecEvent` s: ``start`` first, then ``stdout``/``stderr`` as they
    arrive, then ``exit`` (or ``error`` if the guest connection broke). Closing the session of a
    foreground command kills it; a background command keeps running.
    """

    def __init__(self, conn: _Conn, start: ExecEvent) -> None:
        self._conn = conn
        self._pending: ExecEvent | None = start
        self._done = False
        self.pid = start.pid

    def __aiter__(self) -> ExecSession:
        return self

    async def __anext__(self) -> ExecEvent:
        if self._pending is not None:
            ev, self._pending = self._pending, None
            return ev
        if self._done:
            raise StopAsyncIteration
        try:
            kind, payload = await self._conn.recv()
        except GuestError as e:
            self._finish()
            return ExecEvent(kind="error", error=e.message)
        if kind == K_STDOUT:
            return ExecEvent(kind="stdout", pid=self.pid, data=payload)
        if kind == K_STDERR:
            return ExecEvent(kind="stderr", pid=self.pid, data=payload)
        if kind == K_EVENT:
            d = json.loads(payload)
            if d.get("type") == "exit":
                self._finish()
                return ExecEvent(
                    kind="exit",
                    pid=self.pid,
                    exit_code=int(d["exit_code"]),
                    error=str(d.get("error") or ""),
                    timed_out=bool(d.get("timed_out")),
                )
            return ExecEvent(kind="start", pid=int(d.get("pid", self.pid)))
        self._finish()
        if kind == K_ERROR:
            err = _error_from(payload)
            return ExecEvent(kind="error", pid=self.pid, error=f"{err.kind}: {err.message}")
        return ExecEvent(kind="error", pid=self.pid, error=f"unexpected frame kind {kind}")

    def _finish(self) -> None:
        self._done = True
        self._conn.close()

    async def send_stdin(self, data: bytes) -> None:
        self._check_open()
        self._conn.send_data(data)
        await self._conn.drain()

    async def close_stdin(self) -> None:
        self._check_open()
        self._conn.send(K_END)
        await self._conn.drain()

    async def signal(self, sig: int) -> None:
        self._check_open()
        self._conn.send(K_SIGNAL, str(int(sig)).encode())
        await self._conn.drain()

    async def close(self) -> None:
        self._done = True
        self._pending = None
        self._conn.close()

    def _check_open(self) -> None:
        if self._done:
            raise GuestError("invalid_argument", "the exec session has ended")

    async def __aenter__(self) -> ExecSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GuestClient:
    def __init__(self, socket_path: str, *, op_timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        # Upper bound for unary operations, so a frozen or wedged guest cannot hang a caller.
        self.op_timeout = op_timeout

    # --- plumbing ------------------------------------------------------------------------

    async def _call(
        self, req: dict[str, Any], body: bytes | None = None, limit: float | None = None
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(limit if limit is not None else self.op_timeout):
                conn = await _Conn.open(self.socket_path)
                try:
                    conn.send(K_REQ, _jdump(req))
                    if body is not None:
                        conn.send_data(body)
                        conn.send(K_END)
                    return await conn.result()
                finally:
                    conn.close()
        except TimeoutError as e:
            raise GuestError("timeout", f"guest did not answer {req.get('op')!r} in time") from e

    async def _open_session(self, req: dict[str, Any], stdin: bytes | None = None) -> ExecSession:
        conn = await _Conn.open(self.socket_path)
        try:
            conn.send(K_REQ, _jdump(req))
            if stdin is not None:
                # Not drained here: the guest reads stdin and we read output concurrently, so
                # waiting for stdin to be consumed first could deadlock on a chatty process.
                conn.send_data(stdin)
                conn.send(K_END)
            kind, payload = await conn.recv()
            if kind == K_ERROR:
                raise _error_from(payload)
            if kind != K_EVENT:
                raise GuestError("internal", f"unexpected frame kind {kind} (wanted start)")
            d = json.loads(payload)
            return ExecSession(conn, ExecEvent(kind="start", pid=int(d["pid"])))
        except BaseException:
            conn.close()
            raise

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> None:
        await self._call({"op": "health"}, limit=min(self.op_timeout, 5.0))

    # ASYNC109: these `timeout` parameters are part of the API the host agent codes against;
    # wait_ready's is a polling deadline and exec's is enforced by the guest itself.
    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        """Poll ``health`` every 2 ms until the guest answers (its socket appears ~10 ms in)."""
        deadline = time.monotonic() + timeout
        last: GuestError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestError("timeout", f"guest not ready after {timeout:.1f}s ({last})")
            try:
                await self._call({"op": "health"}, limit=max(0.001, min(remaining, 1.0)))
                return
            except GuestError as e:
                if e.kind not in ("unavailable", "timeout"):
                    raise
                last = e
            await asyncio.sleep(0.002)

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        cmd: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = 30.0,  # noqa: ASYNC109
        stdin: bytes | None = None,
    ) -> ExecResult:
        """Run a command to completion and collect its output.

        ``timeout`` is enforced by the guest (it kills the process group and reports
        ``timed_out``); the client only adds a safety margin on top for a wedged guest.
        """
        req = {
            "op": "exec",
            "cmd": cmd,
            "args": list(args),
            "env": env or {},
            "cwd": cwd,
            "timeout": timeout,
            "stdin": stdin is not None,
        }
        out: list[bytes] = []
        err: list[bytes] = []
        guard = None if not timeout else timeout + 10.0
        try:
            async with asyncio.timeout(guard):
                session = await self._open_session(req, stdin)
                try:
                    async for ev in session:
                        if ev.kind == "stdout":
                            out.append(ev.data)
                        elif ev.kind == "stderr":
                            err.append(ev.data)
                        elif ev.kind == "exit":
                            return ExecResult(b"".join(out), b"".join(err), ev.exit_code, ev.timed_out)
                        elif ev.kind == "error":
                            raise GuestError("unavailable", ev.error)
                finally:
                    await session.close()
        except TimeoutError as e:
            raise GuestError("timeout", f"guest did not finish {cmd!r} in time") from e
        raise GuestError("unavailable", "exec stream ended without an exit event")

    async def exec_stream(
        self,
        cmd: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        tag: str | None = None,
        background: bool = False,
        stdin: bool = True,
    ) -> ExecSession:
        """Start a command and return its live session (after the guest reported ``start``).

        ``stdin=True`` gives the command a pipe fed by ``send_stdin`` / closed by
        ``close_stdin``; ``False`` gives it ``/dev/null``. ``background=True`` keeps it running
        (and its recent output buffered for :meth:`attach`) after the session is closed.
        """
        req = {
            "op": "exec",
            "cmd": cmd,
            "args": list(args),
            "env": env or {},
            "cwd": cwd,
            "timeout": timeout,
            "stdin": stdin,
            "tag": tag,
            "background": background,
        }
        return await self._open_session(req)

    async def attach(self, selector: int | str) -> ExecSession:
        """Follow a running (or recently exited background) process: replays its buffered
        output, then streams the rest and its exit."""
        return await self._open_session({"op": "attach", **_selector(selector)})

    async def list_processes(self) -> list[ProcessInfo]:
        res = await self._call({"op": "list_processes"})
        return [
            ProcessInfo(
                pid=p["pid"],
                tag=p["tag"],
                cmd=p["cmd"],
                args=list(p["args"]),
                running=p["running"],
                exit_code=p["exit_code"],
            )
            for p in res["processes"]
        ]

    async def signal(self, selector: int | str, sig: int) -> None:
        await self._call({"op": "signal", "signal": int(sig), **_selector(selector)})

    async def send_stdin(self, selector: int | str, data: bytes) -> None:
        await self._call({"op": "send_stdin", **_selector(selector)}, body=data)

    async def close_stdin(self, selector: int | str) -> None:
        await self._call({"op": "close_stdin", **_selector(selector)})

    # --- files -----------------------------------------------------------------------------

    async def read_file(self, path: str, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """Stream a file's content. Raises GuestError (e.g. ``not_found``) before the first
        chunk. Memory stays bounded: the guest only reads ahead what the socket can hold."""
        conn = await _Conn.open(self.socket_path)
        try:
            conn.send(K_REQ, _jdump({"op": "read", "path": path, "chunk_size": chunk_size}))
            try:
                async with asyncio.timeout(self.op_timeout):
                    await conn.result()
            except TimeoutError as e:
                raise GuestError("timeout", f"guest did not open {path!r} in time") from e
            while True:
                kind, payload = await conn.recv()
                if kind == K_DATA:
                    yield payload
                elif kind == K_END:
                    return
                elif kind == K_ERROR:
                    raise _error_from(payload)
                else:
                    raise GuestError("internal", f"unexpected frame kind {kind} in file read")
        finally:
            conn.close()

    async def write_file(self, path: str, chunks: AsyncIterable[bytes], mode: int | None = None) -> int:
        """Stream ``chunks`` into ``path`` (parents created, replaced atomically on success).
        Returns the number of bytes written."""
        conn = await _Conn.open(self.socket_path)
        # The guest may refuse early (bad path, parent is a file...): watch for its answer while
        # uploading so a refused 1 GiB upload stops at once instead of being sent in full.
        answer = asyncio.ensure_future(conn.result())
        try:
            conn.send(K_REQ, _jdump({"op": "write", "path": path, "mode": mode}))
            try:
                async for chunk in chunks:
                    if answer.done():
                        break
                    if chunk:
                        conn.send_data(bytes(chunk))
                        await conn.drain()
                else:
                    conn.send(K_END)
                    await conn.drain()
            except GuestError:
                pass  # the guest hung up; its error frame (if any) explains why
            try:
                async with asyncio.timeout(self.op_timeout):
                    res = await answer
            except TimeoutError as e:
                raise GuestError("timeout", f"guest did not confirm writing {path!r}") from e
            if "bytes" not in res:
                raise GuestError("internal", "guest answered a write before it was complete")
            return int(res["bytes"])
        finally:
            if not answer.done():
                answer.cancel()
                with contextlib.suppress(BaseException):
                    await answer
            conn.close()

    async def list_dir(self, path: str, depth: int = 1) -> list[EntryInfo]:
        res = await self._call({"op": "list", "path": path, "depth": depth})
        return [EntryInfo.from_wire(e) for e in res["entries"]]

    async def stat(self, path: str) -> EntryInfo:
        res = await self._call({"op": "stat", "path": path})
        return EntryInfo.from_wire(res["entry"])

    async def make_dir(self, path: str) -> None:
        await self._call({"op": "mkdir", "path": path})

    async def remove(self, path: str) -> None:
        await self._call({"op": "remove", "path": path})

    async def move(self, src: str, dst: str) -> None:
        await self._call({"op": "move", "src": src, "dst": dst})
