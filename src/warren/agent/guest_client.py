"""Host-side asyncio client for the in-sandbox guest agent (``warren/guest/guest.py``).

One request per unix-socket connection; the framing is described in
``warren/guest/PROTOCOL.md`` and implemented in guest_wire.py (frames, connections, exec
sessions). Every failure surfaces as :class:`GuestError` with a machine
``kind``: the guest's own kinds (``not_found``, ``invalid_argument``, ``exited``,
``is_a_directory``, ``not_a_directory``, ``exists``, ``permission``, ``no_space``,
``internal``) plus ``unavailable`` (cannot connect, or the guest hung up), ``timeout`` (the
client gave up waiting), ``output_too_large`` (a unary exec printed more than the cap; the
command was killed), ``too_large`` (the guest sent a frame larger than any legitimate one) and
``not_running`` (the sandbox's container died: :meth:`GuestClient.container_gone`).

The guest runs inside the sandbox, and sandbox root can rewrite its memory (``/proc/1/mem``) or
replace its socket: every frame size and JSON field it sends is treated as hostile. Nothing it
sends is buffered past a fixed bound: frames are capped by kind, unary exec output by
``MAX_EXEC_OUTPUT``, listings come in pages.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass, field
from typing import Any, Literal

from warren.agent.guest_wire import (
    K_DATA,
    K_END,
    K_ERROR,
    K_EVENT,
    K_REQ,
    STREAM_LIMIT,
    Conn,
    ExecEvent,
    ExecSession,
    GuestAddress,
    GuestError,
    Lifeline,
    error_from,
    jdump,
    json_object,
    open_started,
)
from warren.aio import cancel_and_wait

# Output (stdout + stderr) a unary exec may collect for its one reply; past it the command is
# killed and the call fails with ``output_too_large``. Well under the 64 MiB gRPC message cap;
# a command that prints more belongs on the streaming exec, which never buffers. The agent's
# value is ``WARREN_AGENT_MAX_EXEC_OUTPUT`` (AgentSettings.max_exec_output).
MAX_EXEC_OUTPUT = 16 << 20
# A watch's read-ahead from the guest (asyncio reads the socket up to twice it): its frames are
# ~64 KiB (guest_agent/watch.py FRAME_BYTES; a larger one is still read whole). At the default
# 1 MiB, an unread stream held ~2 MiB of the agent each, 32 a sandbox (session 23).
WATCH_READ_AHEAD = 64 << 10


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool


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
    # E2B's file metadata (``user.e2b.*`` xattrs) and, for a symlink, what it resolves to.
    metadata: dict[str, str] = field(default_factory=dict)
    target_type: str = ""
    target_mode: int = 0
    resolved_target: str = ""

    @classmethod
    def from_wire(cls, d: Any) -> EntryInfo:
        """An entry as the guest sent it, checked field by field (a hostile guest gets an
        error, never a crash or a value the RPC cannot carry)."""
        if not isinstance(d, dict) or d.get("type") not in ("file", "dir", "symlink", "other"):
            raise GuestError("internal", "the guest sent a malformed entry")
        target = d.get("symlink_target")
        if d.get("target_type", "") not in ("", "file", "dir", "other"):
            raise GuestError("internal", "the guest sent a malformed entry")
        return cls(
            name=_text(d.get("name")),
            path=_text(d.get("path")),
            type=d["type"],
            size=_int(d.get("size"), 1 << 63),
            mode=_int(d.get("mode"), 1 << 31),
            permissions=_text(d.get("permissions")),
            owner=_text(d.get("owner")),
            group=_text(d.get("group")),
            modified_time=_float(d.get("modified_time")),
            symlink_target=None if target is None else _text(target),
            metadata=_metadata(d.get("metadata")),
            target_type=str(d.get("target_type", "")),
            target_mode=_int(d.get("target_mode", 0), 1 << 31),
            resolved_target=_text(d.get("resolved_target", "")),
        )


# The guest's own bounds on E2B's file metadata (guest_agent/xattrs.py), checked again here.
_MAX_METADATA_KEYS = 32
_MAX_METADATA_TEXT = 4096


def _metadata(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or len(v) > _MAX_METADATA_KEYS:
        raise GuestError("internal", "the guest sent a malformed entry")
    out = {}
    for k, val in v.items():
        if (
            not isinstance(k, str)
            or not isinstance(val, str)
            or len(k) > 128
            or len(val) > _MAX_METADATA_TEXT
        ):
            raise GuestError("internal", "the guest sent a malformed entry")
        out[_text(k)] = _text(val)
    return out


_WATCH_TYPES = frozenset({"create", "write", "remove", "rename", "chmod"})


@dataclass
class WatchEvent:
    """One change the guest's ``watch`` reported (``old_path``: a rename's former name)."""

    type: str
    path: str
    timestamp_ns: int
    entry: EntryInfo | None = None
    old_path: str = ""

    @classmethod
    def from_wire(cls, d: Any) -> WatchEvent:
        if not isinstance(d, dict) or d.get("type") not in _WATCH_TYPES:
            raise GuestError("internal", "the guest sent a malformed watch event")
        entry = d.get("entry")
        old = d.get("old_path")
        return cls(
            type=d["type"],
            path=_text(d.get("path")),
            timestamp_ns=_int(d.get("ts_ns"), 1 << 63),
            entry=None if entry is None else EntryInfo.from_wire(entry),
            old_path="" if old is None else _text(old),
        )


@dataclass
class WatchBatch:
    events: list[WatchEvent]
    overflowed: bool


@dataclass
class ListPage:
    """One page of a listing. ``next_cursor`` is opaque (ASCII), for the next call."""

    entries: list[EntryInfo]
    next_cursor: str
    has_more: bool


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise GuestError("internal", "the guest sent a malformed entry")
    # Names that are not UTF-8 arrive as lone surrogates, which no RPC string can carry.
    return v.encode("utf-8", "replace").decode("utf-8") if not v.isascii() else v


def _int(v: Any, bound: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not -bound <= v < bound:
        raise GuestError("internal", "the guest sent a malformed entry")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not -(1 << 62) < v < 1 << 62:
        raise GuestError("internal", "the guest sent a malformed entry")
    return float(v)


def encode_cursor(path: str) -> str:
    """A guest path as an opaque ASCII cursor (paths may hold any byte, headers may not)."""
    return base64.urlsafe_b64encode(path.encode("utf-8", "surrogatepass")).decode("ascii")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True)
        return raw.decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError) as e:
        raise GuestError("invalid_argument", "invalid cursor") from e


@dataclass
class ProcessInfo:
    pid: int
    tag: str
    cmd: str
    args: list[str]
    running: bool
    exit_code: int | None


def _as(user: str) -> dict[str, str]:
    """A request's ``user`` field: absent for the default (the guest's own user, root), so the
    default request is exactly what it always was."""
    return {"user": user} if user else {}


def _exec_request(
    cmd: str,
    args: list[str],
    env: dict[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    *,
    stdin: bool,
    user: str,
    **extra: Any,
) -> dict[str, Any]:
    """The guest's ``exec`` op, which the unary and the streaming exec both open a session with;
    ``extra``: the streaming exec's ``tag`` and ``background``."""
    return {
        "op": "exec",
        "cmd": cmd,
        "args": list(args),
        "env": env or {},
        "cwd": cwd,
        "timeout": timeout,
        "stdin": stdin,
        **extra,
        **_as(user),
    }


def _selector(selector: int | str) -> dict[str, Any]:
    if isinstance(selector, bool) or not isinstance(selector, int | str):
        raise TypeError("a process selector is a pid (int) or a tag (str)")
    return {"pid": selector} if isinstance(selector, int) else {"tag": selector}


class GuestClient:
    def __init__(
        self, socket_path: GuestAddress, *, op_timeout: float = 30.0, max_output: int = MAX_EXEC_OUTPUT
    ) -> None:
        self.socket_path = socket_path
        # Upper bound for unary operations, so a frozen or wedged guest cannot hang a caller.
        self.op_timeout = op_timeout
        self.max_output = max_output
        # Every connection of this client, ended at once if its container dies.
        self.lifeline = Lifeline()

    def container_gone(self, message: str) -> None:
        """The sandbox's container died: every call in flight fails with ``not_running`` and
        ``message``, and so does every new one."""
        self.lifeline.end(message)

    # --- plumbing ------------------------------------------------------------------------

    async def _call(
        self, req: dict[str, Any], body: bytes | None = None, limit: float | None = None
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(limit if limit is not None else self.op_timeout):
                conn = await Conn.open(self.socket_path, lifeline=self.lifeline)
                try:
                    conn.send(K_REQ, jdump(req))
                    if body is not None:
                        conn.send_data(body)
                        conn.send(K_END)
                    return await conn.result()
                finally:
                    conn.close()
        except TimeoutError as e:
            raise GuestError("timeout", f"guest did not answer {req.get('op')!r} in time") from e

    async def _open_stream(self, req: dict[str, Any], what: str, limit: int = STREAM_LIMIT) -> Conn:
        """The connection of a streaming op (a file read, a watch) once the guest has accepted
        ``req``: its refusal is raised, and no answer within ``op_timeout`` is a ``timeout``
        ("guest did not <what> in time"). The caller closes the connection. ``limit`` as
        :meth:`Conn.open`'s."""
        conn = await Conn.open(self.socket_path, limit, self.lifeline)
        try:
            conn.send(K_REQ, jdump(req))
            async with asyncio.timeout(self.op_timeout):
                await conn.result()
        except BaseException as e:
            conn.close()
            if isinstance(e, TimeoutError):
                raise GuestError("timeout", f"guest did not {what} in time") from e
            raise
        return conn

    async def _open_session(
        self, req: dict[str, Any], stdin: bytes | None = None, limit: int = STREAM_LIMIT
    ) -> ExecSession:
        conn, pid = await open_started(self.socket_path, req, stdin, limit, self.lifeline)
        return ExecSession(conn, ExecEvent(kind="start", pid=pid))

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> None:
        await self._call({"op": "health"}, limit=min(self.op_timeout, 5.0))

    async def claim(self, env: dict[str, str]) -> None:
        """A warm-pool member becomes its sandbox: ``env`` is every process's base environment
        from now on. The guest refuses it once anything but ``health`` has run."""
        await self._call({"op": "claim", "env": env}, limit=min(self.op_timeout, 5.0))

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
        max_output: int | None = None,
        user: str = "",
    ) -> ExecResult:
        """Run a command to completion and collect its output.

        ``timeout`` is enforced by the guest (it kills the process group and reports
        ``timed_out``); the client only adds a safety margin on top for a wedged guest. At most
        ``max_output`` bytes (default: the client's ``max_output``) of stdout and stderr together are
        collected: past that the session is closed, which makes the guest kill the command, and
        the call fails with ``output_too_large``.
        """
        cap = self.max_output if max_output is None else max_output
        req = _exec_request(cmd, args, env, cwd, timeout, stdin=stdin is not None, user=user)
        out: list[bytes] = []
        err: list[bytes] = []
        size = 0
        guard = None if not timeout else timeout + 10.0
        try:
            async with asyncio.timeout(guard):
                session = await self._open_session(req, stdin)
                try:
                    async for ev in session:
                        if ev.kind in ("stdout", "stderr"):
                            size += len(ev.data)
                            if size > cap:
                                raise GuestError(
                                    "output_too_large",
                                    f"the command printed more than {cap} bytes (stdout and stderr "
                                    "together), the most a unary exec collects; it was killed. "
                                    "Use the streaming exec for large output.",
                                )
                            (out if ev.kind == "stdout" else err).append(ev.data)
                        elif ev.kind == "exit":
                            return ExecResult(b"".join(out), b"".join(err), ev.exit_code, ev.timed_out)
                        elif ev.kind == "error":
                            raise GuestError("unavailable", ev.error)
                finally:
                    # A foreground command dies with its session: this is also what kills it when
                    # the output is too large or the caller went away (cancellation).
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
        user: str = "",
        backpressure: bool = False,
        read_ahead: int = STREAM_LIMIT,
    ) -> ExecSession:
        """Start a command and return its live session (after the guest reported ``start``).

        ``stdin=True`` gives the command a pipe fed by ``send_stdin`` / closed by
        ``close_stdin``; ``False`` gives it ``/dev/null``. ``background=True`` keeps it running
        (and its recent output buffered for :meth:`attach`) after the session is closed.
        ``read_ahead``: the guest's frames read ahead of the caller (up to twice it; a caller
        that holds output back wants little).
        """
        req = _exec_request(
            cmd, args, env, cwd, timeout, stdin=stdin, user=user, tag=tag, background=background
        )
        if backpressure:  # the guest waits for this session's reader even in the background
            req["backpressure"] = True
        return await self._open_session(req, limit=read_ahead)

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

    async def pty_input(self, pid: int, data: bytes) -> None:
        await self._call({"op": "pty_input", "pid": pid}, body=data)

    async def pty_resize(self, pid: int, cols: int, rows: int) -> None:
        await self._call({"op": "pty_resize", "pid": pid, "cols": cols, "rows": rows})

    async def pty_signal(self, pid: int, sig: int) -> None:
        await self._call({"op": "pty_signal", "pid": pid, "signal": int(sig)})

    # --- files -----------------------------------------------------------------------------

    async def read_file(
        self, path: str, chunk_size: int = 65536, *, user: str = "", read_ahead: int = STREAM_LIMIT
    ) -> AsyncGenerator[bytes]:
        """Stream a file's content. Raises GuestError (e.g. ``not_found``) before the first
        chunk. Memory stays bounded: the guest only reads ahead what the socket can hold, and
        this side ``read_ahead`` (up to twice it) ahead of the caller."""
        req = {"op": "read", "path": path, "chunk_size": chunk_size, **_as(user)}
        conn = await self._open_stream(req, f"open {path!r}", read_ahead)
        try:
            while True:
                kind, payload = await conn.recv()
                if kind == K_DATA:
                    yield payload
                elif kind == K_END:
                    return
                elif kind == K_ERROR:
                    raise error_from(payload)
                else:
                    raise GuestError("internal", f"unexpected frame kind {kind} in file read")
        finally:
            conn.close()

    async def write_file(
        self, path: str, chunks: AsyncIterable[bytes], mode: int | None = None, *, user: str = "",
        metadata: dict[str, str] | None = None,
    ) -> int:  # fmt: skip
        """Stream ``chunks`` into ``path`` (parents created, replaced atomically on success),
        with ``metadata`` as the new file's ``user.e2b.*`` xattrs. Returns the bytes written."""
        conn = await Conn.open(self.socket_path, lifeline=self.lifeline)
        # The guest may refuse early (bad path, parent is a file...): watch for its answer while
        # uploading so a refused 1 GiB upload stops at once instead of being sent in full.
        answer = asyncio.ensure_future(conn.result())
        try:
            req: dict[str, Any] = {"op": "write", "path": path, "mode": mode, **_as(user)}
            if metadata:
                req["metadata"] = metadata
            conn.send(K_REQ, jdump(req))
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
            await cancel_and_wait(answer)
            conn.close()

    async def list_dir(
        self, path: str, depth: int = 1, *, limit: int = 0, cursor: str = "", user: str = ""
    ) -> ListPage:
        """One page of ``path``'s entries sorted by path (``limit`` 0: the guest's default);
        ``cursor`` is the previous page's ``next_cursor``."""
        req: dict[str, Any] = {"op": "list", "path": path, "depth": depth, **_as(user)}
        if limit:
            req["limit"] = limit
        if cursor:
            req["cursor"] = decode_cursor(cursor)
        res = await self._call(req)
        entries, nxt = res.get("entries"), res.get("next_cursor")
        if not isinstance(entries, list) or not (nxt is None or isinstance(nxt, str)):
            raise GuestError("internal", "the guest sent a malformed listing")
        if limit and len(entries) > limit:
            raise GuestError("internal", "the guest sent more entries than asked for")
        page = [EntryInfo.from_wire(e) for e in entries]
        if res.get("has_more") is True and nxt:
            return ListPage(page, encode_cursor(nxt), True)
        return ListPage(page, "", False)

    async def stat(self, path: str, *, follow: bool = False, user: str = "") -> EntryInfo:
        req: dict[str, Any] = {"op": "stat", "path": path, **_as(user)}
        if follow:
            req["follow"] = True
        return EntryInfo.from_wire((await self._call(req)).get("entry"))

    async def make_dir(self, path: str, *, user: str = "") -> None:
        await self._call({"op": "mkdir", "path": path, **_as(user)})

    async def remove(self, path: str, *, user: str = "") -> None:
        await self._call({"op": "remove", "path": path, **_as(user)})

    async def move(self, src: str, dst: str, *, user: str = "") -> None:
        await self._call({"op": "move", "src": src, "dst": dst, **_as(user)})

    # --- watch -----------------------------------------------------------------------------

    async def watch(
        self, path: str, *, recursive: bool = True, user: str = ""
    ) -> AsyncGenerator[WatchBatch, None]:
        """A directory's changes, batch by batch, until the caller stops (closing the connection
        ends the guest's watch) or the directory itself goes. Errors (``not_found``,
        ``too_large`` past the watch cap, ``permission``) are raised before the first batch;
        the first item is an empty batch once every watch is in place."""
        req = {"op": "watch", "path": path, "recursive": recursive, **_as(user)}
        conn = await self._open_stream(req, f"start watching {path!r}", WATCH_READ_AHEAD)
        try:
            yield WatchBatch([], False)
            while True:
                kind, payload = await conn.recv()
                if kind == K_END:
                    return
                if kind == K_ERROR:
                    raise error_from(payload)
                if kind != K_EVENT:
                    raise GuestError("internal", f"unexpected frame kind {kind} in a watch")
                d = json_object(payload)
                events = d.get("events")
                if not isinstance(events, list):
                    raise GuestError("internal", "the guest sent a malformed watch batch")
                yield WatchBatch([WatchEvent.from_wire(e) for e in events], d.get("overflow") is True)
        finally:
            conn.close()
