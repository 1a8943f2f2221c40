"""The guest protocol on the host side: frames, one connection per request, exec sessions.

A frame is a 4-byte big-endian payload length, a kind byte, and the payload
(``warren/guest/PROTOCOL.md``). Every frame size and JSON field the guest sends is treated as
hostile: frames are capped by kind before they are read, and a malformed answer is a
:class:`GuestError`, never a crash. :class:`GuestClient` (guest_client.py) is built on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from warren.errors import WarrenError

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

HDR = 5
# The guest refuses inbound frames over 8 MiB; stay well below so big writes stream smoothly.
MAX_OUT_CHUNK = 1 << 20
# A stream's stdin is written to the guest in chunks of this size (ExecSession.send_stdin).
STDIN_CHUNK = 64 << 10
# The largest frame a legitimate guest sends, by kind: raw bytes come in reads of at most 4 MiB
# (a file read's chunk_size is clamped there; process output in 64 KiB reads); JSON answers are
# small, a listing page stops at about 1 MiB. A bigger frame is refused before it is read, so a
# hostile guest cannot make the agent allocate more than this per connection (JSON that parses
# into many small objects grows some 20x, hence the lower bound for JSON).
MAX_DATA_FRAME = 4 << 20
MAX_JSON_FRAME = 2 << 20
DATA_KINDS = frozenset({K_DATA, K_STDOUT, K_STDERR})
STREAM_LIMIT = 1 << 20  # asyncio StreamReader buffer: bounds memory while reading a file
# The kind of a call into a sandbox whose container died (container_exits.py); the agent's
# answer for a sandbox that is not running (FAILED_PRECONDITION, the CP's 409).
NOT_RUNNING = "not_running"
# How long a connection that broke waits to learn whether its container died: the container's
# sockets close a moment before its exit is noticed (runc: the kernel ends the pid namespace's
# processes first; gVisor's host socket has no peer left to close it, see Lifeline.end).
DEATH_GRACE_S = 1.0


GuestErrorKind = str


class GuestError(Exception):
    """An error reported by the guest, or the guest being unreachable."""

    def __init__(self, kind: GuestErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class ExecEvent:
    kind: Literal["start", "stdout", "stderr", "exit", "error", "detached"]
    pid: int = 0
    data: bytes = b""
    exit_code: int = 0
    error: str = ""
    timed_out: bool = False


def frame(kind: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(4, "big") + bytes((kind,)) + payload


def jdump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_object(payload: bytes) -> dict[str, Any]:
    try:
        out = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise GuestError("internal", "the guest sent malformed JSON") from e
    if not isinstance(out, dict):
        raise GuestError("internal", "the guest sent JSON that is not an object")
    return out


def exit_of(event: dict[str, Any]) -> tuple[int, str] | None:
    """An ``exit`` event's exit code and error text (cut to 1 KiB), the same for a command and a
    terminal; None when its code is not a 32-bit int (the proto's field)."""
    code = event.get("exit_code")
    if not isinstance(code, int) or isinstance(code, bool) or not -(1 << 31) <= code < 1 << 31:
        return None
    return code, str(event.get("error") or "")[:1024]


def error_from(payload: bytes) -> GuestError:
    try:
        d = json.loads(payload)
        return GuestError(str(d.get("kind", "internal")), str(d.get("message", "")))
    except (ValueError, AttributeError):
        return GuestError("internal", f"malformed error frame: {payload[:200]!r}")


@dataclass(frozen=True)
class TcpGuest:
    """A guest reached over TCP (gVisor: guest_agent/tcp.py): the sandbox's address, the
    guest's port and the sandbox's secret, sent first on every connection. Printed without
    the secret."""

    host: str
    port: int
    secret: bytes = field(repr=False)

    def __str__(self) -> str:
        return f"tcp:{self.host}:{self.port}"


# Where a guest listens: a unix socket's host path, or a TCP address with its secret.
GuestAddress = str | TcpGuest
# SO_LINGER on, 0 s: closing a connection resets it. gVisor cannot checkpoint a sandbox with a
# TCP endpoint that is connected or in TIME_WAIT, and a reset leaves neither on its side.
_LINGER_RESET = struct.pack("ii", 1, 0)


class Lifeline:
    """The guest connections of one container, ended together when it dies (:meth:`end`):
    each pending read fails with :data:`NOT_RUNNING` at once, and so does every new connection.
    Without it a gVisor sandbox's connections outlive its Sentry (its network stack died with
    it, nothing resets them) and a call waited for its own timeout."""

    def __init__(self) -> None:
        self.gone = ""  # the error's message once the container died
        self.conns: set[Conn] = set()
        self._ended = asyncio.Event()

    def end(self, message: str) -> None:
        if self.gone:
            return
        self.gone = message
        self._ended.set()
        for conn in list(self.conns):
            conn.writer.transport.abort()

    def error(self) -> GuestError:
        return GuestError(NOT_RUNNING, self.gone)

    async def explain(self, e: GuestError) -> GuestError:
        """A broken connection's error: :data:`NOT_RUNNING` when its container died (now or
        within :data:`DEATH_GRACE_S`), else ``e``."""
        if not self.gone:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEATH_GRACE_S):
                    await self._ended.wait()
        return self.error() if self.gone else e


class Conn:
    """One connection = one request."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lifeline: Lifeline | None = None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.lifeline = lifeline
        self._ended_here = False  # closed or aborted by this side: no death to wait for
        if lifeline is not None:
            lifeline.conns.add(self)
            if lifeline.gone:  # it died while this connected: the first read says so
                writer.transport.abort()

    @classmethod
    async def _open_tcp(cls, addr: TcpGuest, limit: int, lifeline: Lifeline | None) -> Conn:
        try:
            reader, writer = await asyncio.open_connection(addr.host, addr.port, limit=limit)
        except OSError as e:
            raise GuestError("unavailable", f"cannot connect to guest at {addr}: {e}") from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        writer.write(addr.secret)
        return cls(reader, writer, lifeline)

    @classmethod
    async def open(
        cls, path: GuestAddress, limit: int = STREAM_LIMIT, lifeline: Lifeline | None = None
    ) -> Conn:
        """``limit``: the reader's buffer; asyncio stops reading the socket past twice it.
        ``lifeline``: its container's (None: a sandbox no one watches, e.g. a build step's)."""
        if lifeline is not None and lifeline.gone:
            raise lifeline.error()
        if isinstance(path, TcpGuest):
            return await cls._open_tcp(path, limit, lifeline)
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
            reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}", limit=limit)
        except OSError as e:
            # ENOENT (not yet started / gone), ECONNREFUSED (between bind and listen, or dead).
            raise GuestError("unavailable", f"cannot connect to guest at {path}: {e}") from e
        finally:
            os.close(fd)
        return cls(reader, writer, lifeline)

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.writer.write(frame(kind, payload))

    def send_data(self, data: bytes) -> None:
        for i in range(0, len(data), MAX_OUT_CHUNK):
            self.send(K_DATA, data[i : i + MAX_OUT_CHUNK])

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise GuestError("unavailable", f"guest connection lost: {e}") from e

    async def recv(self) -> tuple[int, bytes]:
        try:
            hdr = await self.reader.readexactly(HDR)
            n = int.from_bytes(hdr[:4], "big")
            cap = MAX_DATA_FRAME if hdr[4] in DATA_KINDS else MAX_JSON_FRAME
            if n > cap:
                raise GuestError("too_large", f"the guest sent a frame of {n} bytes (at most {cap})")
            payload = await self.reader.readexactly(n) if n else b""
        except asyncio.IncompleteReadError as e:
            closed = GuestError("unavailable", "guest closed the connection mid-response")
            raise await self._broken(closed) from e
        except (ConnectionError, OSError) as e:
            raise await self._broken(GuestError("unavailable", f"guest connection lost: {e}")) from e
        return hdr[4], payload

    async def _broken(self, e: GuestError) -> GuestError:
        return e if self.lifeline is None or self._ended_here else await self.lifeline.explain(e)

    async def result(self) -> dict[str, Any]:
        kind, payload = await self.recv()
        if kind == K_RESULT:
            return json_object(payload)
        if kind == K_ERROR:
            raise error_from(payload)
        raise GuestError("internal", f"unexpected frame kind {kind} (wanted a result)")

    def close(self) -> None:
        # The guest treats EOF as "client gone"; no need to wait for the close handshake.
        self._ended_here = True
        self.writer.close()
        if self.lifeline is not None:
            self.lifeline.conns.discard(self)

    def abort(self) -> None:
        """Reset the connection now: a pending read fails at once."""
        self._ended_here = True
        self.writer.transport.abort()


async def open_started(
    path: GuestAddress,
    req: dict[str, Any],
    stdin: bytes | None = None,
    limit: int = STREAM_LIMIT,
    lifeline: Lifeline | None = None,
) -> tuple[Conn, int]:
    """A connection to the guest at ``path`` on which ``req`` started a command or a terminal,
    and its pid (from the start event). ``stdin``, then END, goes right after the request. A
    refusal raises, and the connection is closed. ``limit`` and ``lifeline`` as
    :meth:`Conn.open`'s."""
    conn = await Conn.open(path, limit, lifeline)
    try:
        conn.send(K_REQ, jdump(req))
        if stdin is not None:
            # Not drained here: the guest reads stdin and we read output concurrently, so
            # waiting for stdin to be consumed first could deadlock on a chatty process.
            conn.send_data(stdin)
            conn.send(K_END)
        kind, payload = await conn.recv()
        if kind == K_ERROR:
            raise error_from(payload)
        if kind != K_EVENT:
            raise GuestError("internal", f"unexpected frame kind {kind} (wanted start)")
        pid = json_object(payload).get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 31:
            raise GuestError("internal", "the guest's start event has no valid pid")
        return conn, pid
    except BaseException:
        conn.close()
        raise


# What the client of a process's stream the guest detached is told (an attach, or the start of a
# background process not waited for; ABORTED: rpc_errors.GUEST_CODES); a terminal's is
# pty_rpc.DETACHED.
DETACHED_ATTACH = (
    "this connection was detached: it did not read the process's output, which the sandbox "
    "holds for lagging clients only up to a bound; the process keeps running: attach again "
    "with its pid"
)


class Healthy(Protocol):
    async def health(self) -> None: ...


def answers(guest_of: Callable[[], Healthy]) -> Callable[[], Awaitable[bool]]:
    """A stream's ``alive``: whether the sandbox still runs here (``guest_of``, the manager's
    ``guest(sid)``, raises otherwise) and its guest answers ``health`` on a new connection. The
    container's lifeline alone said alive for a sandbox being killed (session 28)."""

    async def check() -> bool:
        try:
            await guest_of().health()
        except (WarrenError, GuestError, OSError):
            return False
        return True

    return check


class GuestStream:
    """What a command's and a terminal's event streams share: the guest connection, how the
    next frame is read, how the stream ends, and whether the guest detached its client.

    ``alive``: whether the sandbox still runs and its guest answers (:func:`answers`),
    asked when the connection broke; ``None`` for a stream whose break is always an error."""

    alive: Callable[[], Awaitable[bool]] | None = None

    def __init__(self, conn: Conn, pid: int) -> None:
        self._conn = conn
        self._done = False
        self.pid = pid

    async def _detached(self, e: GuestError) -> bool:
        """Whether the guest closed this connection on purpose, detaching a client that fell
        behind (guest lag.py: an attach or terminal client that did not read): it broke
        (``unavailable``) and the guest still answers on a new connection. One rule for
        terminals (pty_rpc) and attached processes; a guest may say so at will, but only this
        stream ends either way."""
        return e.kind == "unavailable" and self.alive is not None and await self.alive()

    async def _next_frame(self) -> tuple[int, bytes] | GuestError:
        """The guest's next frame, or the error that broke the connection (the stream has then
        ended); StopAsyncIteration once it has ended. A dead container's :data:`NOT_RUNNING` is
        raised: the call fails with it, as any call into a sandbox that is not running."""
        if self._done:
            raise StopAsyncIteration
        try:
            return await self._conn.recv()
        except GuestError as e:
            self._finish()
            if e.kind == NOT_RUNNING:
                raise
            return e

    def _finish(self) -> None:
        self._done = True
        self._conn.close()


class ExecSession(GuestStream):
    """A running command's event stream plus its stdin / signal controls.

    Iterate it for :class:`ExecEvent` s: ``start`` first, then ``stdout``/``stderr`` as they
    arrive, then ``exit`` (or ``error`` if the guest connection broke, ``detached`` if the guest
    closed it on purpose: :meth:`GuestStream._detached`). Closing the session of a
    foreground command kills it; a background command keeps running.
    """

    def __init__(self, conn: Conn, start: ExecEvent) -> None:
        super().__init__(conn, start.pid)
        self._pending: ExecEvent | None = start

    def __aiter__(self) -> ExecSession:
        return self

    async def __anext__(self) -> ExecEvent:
        if self._pending is not None:
            ev, self._pending = self._pending, None
            return ev
        if isinstance(got := await self._next_frame(), GuestError):
            return ExecEvent(kind="detached" if await self._detached(got) else "error", error=got.message)
        kind, payload = got
        if kind == K_STDOUT:
            return ExecEvent(kind="stdout", pid=self.pid, data=payload)
        if kind == K_STDERR:
            return ExecEvent(kind="stderr", pid=self.pid, data=payload)
        if kind == K_EVENT:
            try:
                d = json_object(payload)
            except GuestError as e:
                self._finish()
                return ExecEvent(kind="error", pid=self.pid, error=e.message)
            if d.get("type") == "exit":
                self._finish()
                if (ended := exit_of(d)) is None:
                    return ExecEvent(kind="error", pid=self.pid, error="the guest sent an invalid exit code")
                code, error = ended
                timed_out = d.get("timed_out") is True
                return ExecEvent(kind="exit", pid=self.pid, exit_code=code, error=error, timed_out=timed_out)
            return ExecEvent(kind="start", pid=self.pid)
        self._finish()
        if kind == K_ERROR:
            err = error_from(payload)
            return ExecEvent(kind="error", pid=self.pid, error=f"{err.kind}: {err.message}")
        return ExecEvent(kind="error", pid=self.pid, error=f"unexpected frame kind {kind}")

    async def send_stdin(self, data: bytes) -> None:
        """Written a chunk at a time, each drained before the next: the connection's buffer
        holds one chunk of a message the command is not reading, never a copy of all of it."""
        self._check_open()
        view = memoryview(data)
        for i in range(0, len(data), STDIN_CHUNK):
            self._conn.send(K_DATA, bytes(view[i : i + STDIN_CHUNK]))
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
