#!/usr/bin/env python3
"""Warren guest agent: PID 1 of every sandbox (started through the tiny ``guest.py``).

Runs under the template's own ``python3 -I -S`` and must therefore be self-contained: standard
library only, no ``warren`` imports. It serves exec, process control, file operations and health
over a unix socket; the wire protocol is described in ``PROTOCOL.md`` next to this file.

Startup latency matters (the host polls ``health`` right after the container starts), so this
module imports only C-level modules (``_socket``, ``_signal``, ``_json``, ...) on its startup path:
their friendly wrappers (``socket``, ``signal``, ``json``) drag in ``enum`` and ``re`` and cost
about 10 ms each. Everything runs on one thread around one ``epoll``: no per-request threads, and
the guest is the only caller of ``waitpid`` so exit statuses are never stolen.
"""

# SIM105: contextlib.suppress would cost an import (contextlib pulls in collections, functools)
# on the startup path of a program whose startup time is measured.
# ruff: noqa: SIM105

from __future__ import annotations

import _heapq
import _json
import _signal  # type: ignore[import-not-found,unused-ignore]
import _socket
import _stat
import errno
import os
import select
import sys
import time
from _collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

VERSION = "1"

# Frame kinds. A frame is: 4-byte big-endian payload length, 1 kind byte, payload.
K_REQ = 1  # client -> guest: JSON request (always the first frame of a connection)
K_DATA = 2  # raw bytes: file content (both ways), stdin (client -> guest)
K_END = 3  # end of a data stream: file body done, or "close stdin" inside an exec session
K_RESULT = 4  # guest -> client: JSON result of an operation (or the header of a file read)
K_ERROR = 5  # guest -> client: JSON {"kind", "message"}; ends the response
K_EVENT = 6  # guest -> client: JSON process event ({"type": "start"|"exit", ...})
K_STDOUT = 7  # guest -> client: raw stdout bytes
K_STDERR = 8  # guest -> client: raw stderr bytes
K_SIGNAL = 9  # client -> guest inside an exec/attach session: signal number, ASCII decimal

HDR = 5
MAX_IN_FRAME = 8 << 20  # inbound frames larger than this are a protocol error
READ_CHUNK = 65536
# Output buffered for one connection before we stop reading the producer (process pipes or
# a file); the producer resumes once the buffer drains below LOW. This is what bounds memory.
HIGH_WATER = 256 << 10
LOW_WATER = 64 << 10
# An attach subscriber to a process it does not own must not slow the process down: when it
# lags this far behind, it is dropped with an error instead.
SUBSCRIBER_CAP = 8 << 20
RING_BYTES = 1 << 20  # recent output kept per background process for late `attach`
KEEP_EXITED = 64  # exited background processes kept for `list_processes` / `attach`
LINGER = 10.0  # how long a finished connection waits for the client to hang up
EXIT_GRACE = 0.1  # wait this long after exit for pipe EOF (a grandchild may hold the pipes)

DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}

SIGCHLD: int = _signal.SIGCHLD
SIGTERM: int = _signal.SIGTERM
SIGINT: int = _signal.SIGINT
SIGKILL: int = _signal.SIGKILL
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERRHUP = select.EPOLLERR | select.EPOLLHUP


# --- JSON through the C accelerator only (the `json` package imports `re`: ~10 ms) ---------


class _ScanCtx:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_ScanCtx())  # type: ignore[arg-type]


def _unencodable(obj: object) -> object:
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


_encode = _json.make_encoder(
    None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)


def jdump(obj: object) -> bytes:
    return "".join(_encode(obj, 0)).encode("ascii")


def jload(data: bytes) -> Any:
    text = data.decode("utf-8")
    try:
        obj, end = _scan(text, 0)
    except Exception as e:  # the C scanner raises odd types (SystemError) without `json`
        raise GuestFail("invalid_argument", "malformed JSON") from e
    if end != len(text):
        raise GuestFail("invalid_argument", "trailing data after JSON")
    return obj


# --- errors ----------------------------------------------------------------------------------


class GuestFail(Exception):
    """An error reported to the client as an ERROR frame with a machine-readable kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_ERRNO_KIND = {
    errno.ENOENT: "not_found",
    errno.ESRCH: "not_found",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.EEXIST: "exists",
    errno.ENOTEMPTY: "exists",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
    errno.ETXTBSY: "permission",
    errno.EINVAL: "invalid_argument",
    errno.ENAMETOOLONG: "invalid_argument",
    errno.ELOOP: "invalid_argument",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
}


def os_fail(e: OSError, what: str) -> GuestFail:
    kind = _ERRNO_KIND.get(e.errno or 0, "internal")
    if kind == "not_found":  # say it plainly: people (and logs) read "not found"
        return GuestFail(kind, f"{what}: not found")
    return GuestFail(kind, f"{what}: {e.strerror or e}")


def log(msg: str) -> None:
    try:
        os.write(2, f"warren-guest[{os.getpid()}]: {msg}\n".encode(errors="replace"))
    except OSError:
        pass


def frame(kind: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(4, "big") + bytes((kind,)) + payload


# --- request field validation ------------------------------------------------------------


def req_str(req: dict[str, Any], key: str, default: str | None = None) -> str:
    v = req.get(key, default)
    if not isinstance(v, str):
        raise GuestFail("invalid_argument", f"field {key!r} must be a string")
    return v


def req_path(req: dict[str, Any], key: str = "path") -> str:
    p = req_str(req, key)
    if not p.startswith("/"):
        raise GuestFail("invalid_argument", f"path must be absolute: {p!r}")
    if "\0" in p:
        raise GuestFail("invalid_argument", "path contains a NUL byte")
    return os.path.normpath(p)


def req_selector(req: dict[str, Any]) -> int | str:
    pid = req.get("pid")
    tag = req.get("tag")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        return pid
    if isinstance(tag, str) and tag:
        return tag
    raise GuestFail("invalid_argument", "a selector needs a positive 'pid' or a non-empty 'tag'")


# --- the event loop ------------------------------------------------------------------------


class Loop:
    def __init__(self) -> None:
        self.ep = select.epoll()
        self.cbs: dict[int, Callable[[int], None]] = {}
        self.masks: dict[int, int] = {}
        self.timers: list[list[Any]] = []
        self.seq = 0

    def watch(self, fd: int, mask: int, cb: Callable[[int], None]) -> None:
        self.cbs[fd] = cb
        if fd in self.masks:
            self.ep.modify(fd, mask)
        else:
            self.ep.register(fd, mask)
        self.masks[fd] = mask

    def set_mask(self, fd: int, mask: int) -> None:
        if fd not in self.masks or self.masks[fd] == mask:
            return
        self.ep.modify(fd, mask)
        self.masks[fd] = mask

    def unwatch(self, fd: int) -> None:
        if fd in self.masks:
            del self.masks[fd]
            del self.cbs[fd]
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> list[Any]:
        self.seq += 1
        entry = [time.monotonic() + delay, self.seq, fn]
        _heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel(entry: list[Any] | None) -> None:
        if entry is not None:
            entry[2] = None

    def run_once(self) -> None:
        timeout = -1.0
        if self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        events = self.ep.poll(timeout, 256)
        for fd, ev in events:
            cb = self.cbs.get(fd)
            if cb is None:
                continue
            try:
                cb(ev)
            except Exception as e:  # one bad callback must never take PID 1 down
                log(f"callback for fd {fd} failed: {e!r}")
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            entry = _heapq.heappop(self.timers)
            fn = entry[2]
            if fn is not None:
                try:
                    fn()
                except Exception as e:
                    log(f"timer failed: {e!r}")


# --- connections ---------------------------------------------------------------------------


class Conn:
    """One client connection = one request. Non-blocking, buffered both ways."""

    def __init__(self, guest: Guest, sock: _socket.socket) -> None:
        self.g = guest
        self.sock = sock
        self.fd = fd = sock.fileno()
        self.draining = False
        self.linger: list[Any] | None = None
        self.inbuf = bytearray()
        self.out = bytearray()
        self.op: Op | None = None
        self.closed = False
        self.closing = False
        self.reading = True
        self.on_drain: Callable[[], None] | None = None
        guest.loop.watch(fd, EPOLLIN, self.on_event)

    def _update_mask(self) -> None:
        if self.closed:
            return
        if self.draining:
            mask = EPOLLIN
        else:
            mask = (EPOLLIN if self.reading and not self.closing else 0) | (EPOLLOUT if self.out else 0)
        self.g.loop.set_mask(self.fd, mask)

    def on_event(self, ev: int) -> None:
        if self.draining:
            self._discard()
            return
        if ev & EPOLLOUT:
            self.flush()
        if self.closed:
            return
        if ev & (EPOLLIN | EPOLLERRHUP):
            if self.reading and not self.closing:
                self.read()
            elif ev & EPOLLERRHUP:
                self.close()

    def read(self) -> None:
        try:
            data = os.read(self.fd, 262144)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            # Protocol clients never half-close: EOF means the client went away.
            self.close()
            return
        self.inbuf += data
        self.parse()

    def parse(self) -> None:
        buf = self.inbuf
        off = 0
        while self.reading and not self.closed and not self.closing and len(buf) - off >= HDR:
            n = int.from_bytes(buf[off : off + 4], "big")
            if n > MAX_IN_FRAME:
                self.fail(GuestFail("invalid_argument", f"frame of {n} bytes is too large"))
                return
            if len(buf) - off - HDR < n:
                break
            kind = buf[off + 4]
            payload = bytes(buf[off + HDR : off + HDR + n])
            off += HDR + n
            self.dispatch(kind, payload)
        if off:
            del buf[:off]

    def dispatch(self, kind: int, payload: bytes) -> None:
        try:
            if self.op is None:
                if kind != K_REQ:
                    raise GuestFail("invalid_argument", "the first frame must be a request")
                req = jload(payload)
                if not isinstance(req, dict):
                    raise GuestFail("invalid_argument", "a request must be a JSON object")
                op = self.g.start_op(self, req)
                if self.closed or self.draining:
                    if op is not None:
                        op.on_close()  # it completed (or its client vanished) while starting
                else:
                    self.op = op
            else:
                self.op.on_frame(kind, payload)
        except GuestFail as e:
            self.fail(e)
        except OSError as e:
            self.fail(os_fail(e, "I/O error"))
        except Exception as e:
            log(f"request failed: {e!r}")
            self.fail(GuestFail("internal", f"{type(e).__name__}: {e}"))

    def fail(self, e: GuestFail) -> None:
        self.send(K_ERROR, jdump({"kind": e.kind, "message": e.message}))
        self.finish()

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._update_mask()

    def resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self._update_mask()
            if self.inbuf:
                self.parse()

    def send(self, kind: int, payload: bytes = b"") -> None:
        if self.closed or self.closing:
            return
        hdr = len(payload).to_bytes(4, "big") + bytes((kind,))
        if self.out:
            self.out += hdr
            self.out += payload
            return
        try:
            n = os.writev(self.fd, (hdr, payload))
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        total = HDR + len(payload)
        if n < total:
            if n < HDR:
                self.out += hdr[n:]
                self.out += payload
            else:
                self.out += memoryview(payload)[n - HDR :]
            self._update_mask()

    def flush(self) -> None:
        if self.out:
            try:
                n = os.write(self.fd, self.out)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            del self.out[:n]
        if not self.out:
            if self.closing:
                self._half_close()
                return
            self._update_mask()
        if len(self.out) < LOW_WATER and self.on_drain is not None:
            cb = self.on_drain
            self.on_drain = None
            cb()

    def congested(self) -> bool:
        return len(self.out) >= HIGH_WATER

    def finish(self) -> None:
        """The response is complete: end the connection once everything queued has been sent."""
        if self.closed or self.draining:
            return
        self.closing = True
        self.on_drain = None
        if not self.out:
            self._half_close()
        else:
            self._update_mask()

    def _half_close(self) -> None:
        # Closing a unix socket while client data sits unread in our receive queue makes the
        # kernel fail the client's reads with ECONNRESET, and the client could lose our final
        # frame (an upload refused early, stdin racing a process exit). So shut down our side
        # only, discard whatever the client still sends, and close when it hangs up.
        self.draining = True
        self.inbuf = bytearray()
        self._release_op()
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._update_mask()
        self.linger = self.g.loop.call_later(LINGER, self.close)

    def _discard(self) -> None:
        try:
            data = os.read(self.fd, 262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        Loop.cancel(self.linger)
        self.g.loop.unwatch(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self._release_op()

    def _release_op(self) -> None:
        op = self.op
        self.op = None
        if op is not None:
            try:
                op.on_close()
            except Exception as e:
                log(f"cleanup failed: {e!r}")


# --- operations ------------------------------------------------------------------------------


class Op:
    """A request in progress on one connection. Unary ops finish inside their constructor."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def on_frame(self, kind: int, payload: bytes) -> None:
        raise GuestFail("invalid_argument", f"unexpected frame kind {kind}")

    def on_close(self) -> None:
        pass

    def reply(self, result: dict[str, Any]) -> None:
        self.conn.send(K_RESULT, jdump(result))
        self.conn.finish()


class ReadOp(Op):
    def __init__(self, conn: Conn, req: dict[str, Any]) -> None:
        super().__init__(conn)
        path = req_path(req)
        chunk = req.get("chunk_size", READ_CHUNK)
        if not isinstance(chunk, int) or chunk <= 0:
            raise GuestFail("invalid_argument", "chunk_size must be a positive integer")
        self.chunk = min(max(chunk, 1024), 4 << 20)
        try:
            # O_NONBLOCK so that opening a FIFO cannot hang the whole guest.
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise os_fail(e, path) from e
        st = os.fstat(self.fd)
        if _stat.S_ISDIR(st.st_mode):
            os.close(self.fd)
            self.fd = -1
            raise GuestFail("is_a_directory", f"{path}: is a directory")
        if not _stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            self.fd = -1
            raise GuestFail("invalid_argument", f"{path}: not a regular file")
        conn.send(K_RESULT, jdump({"size": st.st_size}))
        self.pump()

    def pump(self) -> None:
        conn = self.conn
        while not conn.closed and not conn.congested():
            try:
                data = os.read(self.fd, self.chunk)
            except OSError as e:
                self._close_file()
                conn.fail(os_fail(e, "read"))
                return
            if not data:
                self._close_file()
                conn.send(K_END)
                conn.finish()
                return
            conn.send(K_DATA, data)
        if not conn.closed:
            conn.on_drain = self.pump

    def _close_file(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def on_close(self) -> None:
        self._close_file()


class WriteOp(Op):
    _counter = 0

    def __init__(self, conn: Conn, req: dict[str, Any]) -> None:
        super().__init__(conn)
        path = req_path(req)
        mode = req.get("mode")
        if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
            raise GuestFail("invalid_argument", "mode must be an integer in 0..0o7777")
        # Write through a symlink to its target, as a plain open() would. We run inside the
        # sandbox's mount namespace, so resolution cannot leave the sandbox.
        target = os.path.realpath(path)
        parent = os.path.dirname(target)
        try:
            os.makedirs(parent, exist_ok=True)
        except FileExistsError as e:
            raise GuestFail("not_a_directory", f"{parent}: a path component is not a directory") from e
        except OSError as e:
            raise os_fail(e, parent) from e
        self.uid = self.gid = -1
        self.mode = 0o666 & ~self.g_umask()
        try:
            st = os.stat(target)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise os_fail(e, target) from e
        else:
            if _stat.S_ISDIR(st.st_mode):
                raise GuestFail("is_a_directory", f"{path}: is a directory")
            # Replacing the file must not silently change its permissions or owner.
            self.mode, self.uid, self.gid = _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        if mode is not None:
            self.mode = mode
        WriteOp._counter += 1
        self.target = target
        name = f".{os.path.basename(target)}.warren-{os.getpid()}-{WriteOp._counter}"
        self.tmp = os.path.join(parent, name)
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise os_fail(e, target) from e
        self.written = 0

    @staticmethod
    def g_umask() -> int:
        return Guest.umask

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == K_DATA:
            view = memoryview(payload)
            try:
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
            except OSError as e:
                self._abort()
                raise os_fail(e, self.target) from e
            self.written += len(payload)
        elif kind == K_END:
            try:
                os.fchmod(self.fd, self.mode)
                if self.uid >= 0:
                    os.fchown(self.fd, self.uid, self.gid)
                os.close(self.fd)
                self.fd = -1
                os.rename(self.tmp, self.target)
            except OSError as e:
                self._abort()
                raise os_fail(e, self.target) from e
            self.tmp = ""
            self.reply({"bytes": self.written})
        else:
            super().on_frame(kind, payload)

    def _abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = ""

    def on_close(self) -> None:
        self._abort()  # the client went away mid-upload: never leave a half-written temp file


_names: dict[tuple[str, int], str] = {}


def _id_name(kind: str, num: int) -> str:
    key = (kind, num)
    name = _names.get(key)
    if name is None:
        try:
            if kind == "u":
                import pwd

                name = pwd.getpwuid(num).pw_name
            else:
                import grp

                name = grp.getgrgid(num).gr_name
        except KeyError:
            name = str(num)
        _names[key] = name
    return name


def entry_info(path: str, st: os.stat_result | None = None) -> dict[str, Any]:
    if st is None:
        st = os.lstat(path)
    m = st.st_mode
    target = None
    if _stat.S_ISLNK(m):
        kind = "symlink"
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    elif _stat.S_ISDIR(m):
        kind = "dir"
    elif _stat.S_ISREG(m):
        kind = "file"
    else:
        kind = "other"
    return {
        "name": os.path.basename(path) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": _stat.S_IMODE(m),
        "permissions": _stat.filemode(m),
        "owner": _id_name("u", st.st_uid),
        "group": _id_name("g", st.st_gid),
        "modified_time": st.st_mtime,
        "symlink_target": target,
    }


def op_stat(req: dict[str, Any]) -> dict[str, Any]:
    path = req_path(req)
    try:
        return {"entry": entry_info(path)}
    except OSError as e:
        raise os_fail(e, path) from e


def op_list(req: dict[str, Any]) -> dict[str, Any]:
    path = req_path(req)
    depth = req.get("depth", 1)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise GuestFail("invalid_argument", "depth must be an integer >= 1")
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_fail(e, path) from e
    if not _stat.S_ISDIR(st.st_mode):
        raise GuestFail("not_a_directory", f"{path}: not a directory")
    out: list[dict[str, Any]] = []

    def walk(d: str, level: int) -> None:
        try:
            it = os.scandir(d)
        except OSError as e:
            if level == 1:
                raise os_fail(e, d) from e
            return  # an unreadable subdirectory does not spoil the listing of the rest
        with it:
            for de in it:
                try:
                    info = entry_info(de.path, de.stat(follow_symlinks=False))
                except OSError:
                    continue  # vanished between readdir and lstat
                out.append(info)
                if info["type"] == "dir" and level < depth:
                    walk(de.path, level + 1)

    walk(path, 1)
    out.sort(key=lambda e: e["path"])
    return {"entries": out}


def op_mkdir(req: dict[str, Any]) -> dict[str, Any]:
    path = req_path(req)
    mode = req.get("mode", 0o755)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise GuestFail("invalid_argument", "mode must be an integer in 0..0o7777")
    try:
        os.makedirs(path, mode, exist_ok=True)
    except FileExistsError as e:
        raise GuestFail("exists", f"{path}: exists and is not a directory") from e
    except NotADirectoryError as e:
        raise GuestFail("not_a_directory", f"{path}: a path component is not a directory") from e
    except OSError as e:
        raise os_fail(e, path) from e
    return {}


def op_remove(req: dict[str, Any]) -> dict[str, Any]:
    path = req_path(req)
    if path == "/":
        raise GuestFail("invalid_argument", "refusing to remove /")
    try:
        st = os.lstat(path)
        if _stat.S_ISDIR(st.st_mode):
            import shutil  # lazily: only tree removal and cross-device moves need it

            shutil.rmtree(path)  # the fd-based variant: it never follows symlinks out of the tree
        else:
            os.unlink(path)
    except OSError as e:
        raise os_fail(e, path) from e
    return {}


def op_move(req: dict[str, Any]) -> dict[str, Any]:
    src = req_path(req, "src")
    dst = req_path(req, "dst")
    try:
        os.lstat(src)
    except OSError as e:
        raise os_fail(e, src) from e
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    except FileExistsError as e:
        raise GuestFail("not_a_directory", f"{dst}: a path component is not a directory") from e
    except OSError as e:
        raise os_fail(e, dst) from e
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise os_fail(e, f"{src} -> {dst}") from e
        import shutil

        try:
            shutil.move(src, dst)
        except OSError as e2:
            raise os_fail(e2, f"{src} -> {dst}") from e2
    return {}


# --- processes -------------------------------------------------------------------------------


def which(cmd: str, path_var: str) -> str:
    if "/" in cmd:
        return cmd
    for d in path_var.split(":"):
        cand = os.path.join(d or ".", cmd)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if _stat.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
            return cand
    raise GuestFail("not_found", f"command not found: {cmd}")


class Proc:
    pid: int
    tag: str
    exit_code: int | None
    started: float

    def __init__(self, guest: Guest, req: dict[str, Any]) -> None:
        self.g = guest
        cmd = req_str(req, "cmd")
        if not cmd:
            raise GuestFail("invalid_argument", "cmd must not be empty")
        args = req.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise GuestFail("invalid_argument", "args must be a list of strings")
        env_req = req.get("env") or {}
        if not isinstance(env_req, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_req.items()
        ):
            raise GuestFail("invalid_argument", "env must map strings to strings")
        timeout = req.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise GuestFail("invalid_argument", "timeout must be a non-negative number")
        tag = req.get("tag") or ""
        if not isinstance(tag, str):
            raise GuestFail("invalid_argument", "tag must be a string")
        if tag and any(p.tag == tag and p.running for p in guest.procs.values()):
            raise GuestFail("exists", f"a running process already has tag {tag!r}")
        env = {**DEFAULT_ENV, **guest.base_env, **env_req}
        cwd = req.get("cwd")
        if cwd is None:
            home = env.get("HOME", "/")
            cwd = home if os.path.isdir(home) else "/"
        elif not isinstance(cwd, str) or not cwd.startswith("/"):
            raise GuestFail("invalid_argument", f"cwd must be an absolute path: {cwd!r}")
        exe = which(cmd, env.get("PATH", DEFAULT_ENV["PATH"]))

        self.cmd, self.args, self.tag = cmd, list(args), tag
        self.background = bool(req.get("background"))
        self.subs: list[Conn] = []
        self.owner: Conn | None = None
        self.ring: deque[tuple[int, bytes]] = deque()
        self.ring_size = 0
        self.exit_code: int | None = None
        self.timed_out = False
        self.finished = False
        self.paused = False
        self.stdin_buf = bytearray()
        self.stdin_close_pending = False
        self.stdin_waiters: list[Conn] = []
        self.grace: list[Any] | None = None

        want_stdin = bool(req.get("stdin"))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if want_stdin else (-1, -1)
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        if want_stdin:
            actions.insert(0, (os.POSIX_SPAWN_DUP2, in_r, 0))
        else:
            actions.insert(0, (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
        try:
            # posix_spawn cannot chdir (3.11), but the guest is single-threaded, so changing its
            # own cwd around the spawn is safe and keeps the fast vfork path.
            try:
                os.chdir(cwd)
            except OSError as e:
                raise os_fail(e, f"cwd {cwd}") from e
            try:
                self.pid = os.posix_spawn(
                    exe,
                    [cmd, *args],
                    env,
                    file_actions=actions,
                    setpgroup=0,  # own process group: timeouts and signals reach its children
                    setsigdef=guest.sigdef,  # Python ignores SIGPIPE/SIGXFSZ; children must not
                )
            except ValueError as e:
                raise GuestFail("invalid_argument", str(e)) from e
            except OSError as e:
                raise os_fail(e, f"spawn {cmd}") from e
            finally:
                os.chdir("/")
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd >= 0:
                    os.close(fd)
        self.started = time.time()
        self.out_fd, self.err_fd, self.in_fd = out_r, err_r, in_w
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        if in_w >= 0:
            os.set_blocking(in_w, False)
        guest.loop.watch(out_r, EPOLLIN, self._pipe_cb(out_r, K_STDOUT))
        guest.loop.watch(err_r, EPOLLIN, self._pipe_cb(err_r, K_STDERR))
        self.timer = guest.loop.call_later(float(timeout), self.on_timeout) if timeout else None
        guest.procs[self.pid] = self

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def info(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "tag": self.tag,
            "cmd": self.cmd,
            "args": self.args,
            "running": self.running,
            "exit_code": self.exit_code,
            "background": self.background,
        }

    # output

    def on_pipe(self, fd: int, kind: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
            self.maybe_finish()
            return
        self.publish(kind, data)

    def publish(self, kind: int, data: bytes) -> None:
        if self.background:
            self.ring.append((kind, data))
            self.ring_size += len(data)
            while self.ring_size > RING_BYTES and len(self.ring) > 1:
                self.ring_size -= len(self.ring.popleft()[1])
        for c in list(self.subs):
            c.send(kind, data)
            # Only a foreground command waits for its client (below); a background one never
            # does, so whoever lags too far behind it is cut off rather than buffered for.
            if (c is not self.owner or self.background) and len(c.out) > SUBSCRIBER_CAP:
                self.unsubscribe(c)
                c.fail(GuestFail("internal", "attach client fell too far behind; detached"))
        owner = self.owner
        if owner is not None and not self.background and owner.congested() and not owner.closed:
            # Backpressure: stop reading the pipes; the process blocks on write like under any
            # slow reader, and memory stays bounded. Resume when the client catches up.
            self._set_paused(True)
            owner.on_drain = lambda: self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        if self.paused == paused:
            return
        self.paused = paused
        for fd, kind in ((self.out_fd, K_STDOUT), (self.err_fd, K_STDERR)):
            if fd < 0:
                continue
            if paused:
                self.g.loop.unwatch(fd)
            else:
                self.g.loop.watch(fd, EPOLLIN, self._pipe_cb(fd, kind))

    def _pipe_cb(self, fd: int, kind: int) -> Callable[[int], None]:
        return lambda ev: self.on_pipe(fd, kind)

    def _close_pipe(self, fd: int) -> None:
        self.g.loop.unwatch(fd)
        os.close(fd)
        if fd == self.out_fd:
            self.out_fd = -1
        elif fd == self.err_fd:
            self.err_fd = -1

    def _drain_pipes(self) -> None:
        for fd, kind in ((self.out_fd, K_STDOUT), (self.err_fd, K_STDERR)):
            while fd >= 0:
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                self.publish(kind, data)
            if fd >= 0:
                self._close_pipe(fd)

    # lifecycle

    def on_timeout(self) -> None:
        self.timer = None
        if self.running:
            self.timed_out = True
            self.killpg(SIGKILL)

    def killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(self.pid, sig)  # the group is gone but the leader may not be reaped yet
            except ProcessLookupError:
                pass

    def on_exit(self, status: int) -> None:
        self.exit_code = os.waitstatus_to_exitcode(status)
        Loop.cancel(self.timer)
        self.timer = None
        self.maybe_finish()
        if not self.finished:
            self.grace = self.g.loop.call_later(EXIT_GRACE, self.on_grace)

    def on_grace(self) -> None:
        self.grace = None
        if self.finished:
            return
        if self.paused:  # a slow client, not a lingering grandchild: keep waiting for it
            self.grace = self.g.loop.call_later(EXIT_GRACE, self.on_grace)
            return
        # A grandchild still holds the output pipes; report the exit anyway.
        self._drain_pipes()
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.finished or self.exit_code is None or self.out_fd >= 0 or self.err_fd >= 0:
            return
        self.finished = True
        Loop.cancel(self.grace)
        self._close_stdin_fd()
        ev = self.exit_event()
        for c in self.subs:
            c.send(K_EVENT, ev)
            c.finish()
        self.subs = []
        self.owner = None
        self.g.retire(self)

    def exit_event(self) -> bytes:
        code = self.exit_code if self.exit_code is not None else -1
        ev: dict[str, Any] = {"type": "exit", "exit_code": code, "timed_out": self.timed_out}
        if self.timed_out:
            ev["error"] = "timed out; process group killed"
        elif code < 0:
            ev["error"] = f"killed by signal {-code}"
        return jdump(ev)

    def subscribe(self, c: Conn, replay: bool) -> None:
        c.send(K_EVENT, jdump({"type": "start", "pid": self.pid}))
        if replay:
            for kind, data in self.ring:
                c.send(kind, data)
        if self.finished:
            c.send(K_EVENT, self.exit_event())
            c.finish()
        else:
            self.subs.append(c)

    def unsubscribe(self, c: Conn) -> None:
        if c in self.subs:
            self.subs.remove(c)
        if c in self.stdin_waiters:
            self.stdin_waiters.remove(c)
        if c is self.owner:
            self.owner = None
            if not self.background and self.running:
                # A foreground command dies with its client; background ones outlive it.
                self.killpg(SIGKILL)
            self._set_paused(False)

    # stdin

    def feed_stdin(self, data: bytes, conn: Conn) -> None:
        if self.in_fd < 0 or self.stdin_close_pending:
            raise GuestFail("invalid_argument", "stdin is closed (or was never opened)")
        self.stdin_buf += data
        self._flush_stdin()
        if len(self.stdin_buf) >= HIGH_WATER:
            # Backpressure on the sender until the process reads its stdin.
            conn.pause_reading()
            self.stdin_waiters.append(conn)

    def close_stdin(self) -> None:
        if self.in_fd < 0:
            return
        self.stdin_close_pending = True
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        if self.in_fd < 0:
            return
        if self.stdin_buf:
            try:
                n = os.write(self.in_fd, self.stdin_buf)
                del self.stdin_buf[:n]
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: the process closed its stdin; nothing more will be read
                self.stdin_buf.clear()
                self._close_stdin_fd()
                return
        if self.stdin_buf:
            self.g.loop.watch(self.in_fd, EPOLLOUT, lambda ev: self._flush_stdin())
        else:
            self.g.loop.unwatch(self.in_fd)
            if self.stdin_close_pending:
                self._close_stdin_fd()
        if len(self.stdin_buf) < LOW_WATER and self.stdin_waiters:
            waiters, self.stdin_waiters = self.stdin_waiters, []
            for c in waiters:
                c.resume_reading()

    def _close_stdin_fd(self) -> None:
        if self.in_fd >= 0:
            self.g.loop.unwatch(self.in_fd)
            os.close(self.in_fd)
            self.in_fd = -1
        self.stdin_buf.clear()
        waiters, self.stdin_waiters = self.stdin_waiters, []
        for c in waiters:
            c.resume_reading()


def parse_signal(payload: bytes) -> int:
    try:
        sig = int(payload.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise GuestFail("invalid_argument", "signal must be an ASCII decimal number") from e
    if not 0 < sig < 65:
        raise GuestFail("invalid_argument", f"invalid signal {sig}")
    return sig


class SessionOp(Op):
    """exec and attach: events stream out; stdin data, stdin EOF and signals stream in."""

    def __init__(self, conn: Conn, proc: Proc, owner: bool, replay: bool) -> None:
        super().__init__(conn)
        self.proc = proc
        if owner:
            proc.owner = conn
        proc.subscribe(conn, replay)

    def on_frame(self, kind: int, payload: bytes) -> None:
        p = self.proc
        if kind == K_DATA:
            try:
                p.feed_stdin(payload, self.conn)
            except GuestFail:
                if p.running:
                    raise
                # Late stdin to a process that already exited is not worth failing the stream.
        elif kind == K_END:
            p.close_stdin()
        elif kind == K_SIGNAL:
            if p.running:
                p.killpg(parse_signal(payload))
        else:
            super().on_frame(kind, payload)

    def on_close(self) -> None:
        self.proc.unsubscribe(self.conn)


class SendStdinOp(Op):
    def __init__(self, conn: Conn, proc: Proc) -> None:
        super().__init__(conn)
        self.proc = proc
        if proc.in_fd < 0 or proc.stdin_close_pending:
            raise GuestFail("invalid_argument", f"process {proc.pid} has no open stdin")

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == K_DATA:
            self.proc.feed_stdin(payload, self.conn)
        elif kind == K_END:
            self.reply({})
        else:
            super().on_frame(kind, payload)

    def on_close(self) -> None:
        if self.conn in self.proc.stdin_waiters:
            self.proc.stdin_waiters.remove(self.conn)


# --- the guest -------------------------------------------------------------------------------


class Guest:
    umask = 0o022

    def __init__(self, socket_path: str, term_grace: float) -> None:
        self.path = socket_path
        self.term_grace = term_grace
        self.loop = Loop()
        self.procs: dict[int, Proc] = {}
        self.exited_bg: deque[int] = deque()
        self.is_init = os.getpid() == 1
        self.stopping = False
        self.orphans_reaped = 0
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self.sigdef = {s for s in (getattr(_signal, n, None) for n in ("SIGPIPE", "SIGXFSZ")) if s}
        os.umask(Guest.umask)
        os.chdir("/")

        # Signals arrive as bytes on a pipe (set_wakeup_fd) so the epoll loop handles them
        # synchronously; the Python-level handlers are no-ops. A handler (not SIG_DFL) matters
        # for PID 1: the kernel drops default-action signals sent to a namespace's init.
        self.sig_r, sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(sig_w, False)
        _signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        for s in (SIGCHLD, SIGTERM, SIGINT, _signal.SIGHUP):
            _signal.signal(s, _noop)
        self.loop.watch(self.sig_r, EPOLLIN, self.on_signal)

        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        d = os.path.dirname(socket_path)
        if d:
            os.makedirs(d, exist_ok=True)
        self.lsock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
        # Bind under a temporary name and rename once listening: the path then only ever
        # appears ready, so a client never sees ECONNREFUSED in the bind-to-listen window.
        tmp = f"{socket_path}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        self.lsock.bind(tmp)
        self.lsock.listen(512)
        os.rename(tmp, socket_path)
        self.loop.watch(self.lsock.fileno(), EPOLLIN, self.on_accept)
        self.reap()  # children could predate us (exec'd into place by a wrapper)

    def on_accept(self, ev: int) -> None:
        for _ in range(64):
            try:
                fd, _addr = self.lsock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and friends: log and keep serving the connections we have.
                log(f"accept failed: {e}")
                return
            sock = _socket.socket(fileno=fd)
            sock.setblocking(False)
            Conn(self, sock)

    def start_op(self, conn: Conn, req: dict[str, Any]) -> Op | None:
        op = req.get("op")
        if op == "health":
            conn.send(K_RESULT, jdump({"ok": True, "pid": os.getpid(), "version": VERSION}))
            conn.finish()
            return None
        if op == "exec":
            if self.stopping:
                raise GuestFail("unavailable", "the sandbox is shutting down")
            proc = Proc(self, req)
            return SessionOp(conn, proc, owner=True, replay=False)
        if op == "attach":
            return SessionOp(conn, self.select(req), owner=False, replay=True)
        if op == "list_processes":
            procs = sorted(self.procs.values(), key=lambda p: p.started)
            conn.send(K_RESULT, jdump({"processes": [p.info() for p in procs]}))
            conn.finish()
            return None
        if op == "signal":
            p = self.select(req)
            sig = req.get("signal")
            if not isinstance(sig, int) or not 0 < sig < 65:
                raise GuestFail("invalid_argument", "signal must be an integer in 1..64")
            if not p.running:
                raise GuestFail("not_found", f"process {p.pid} has already exited")
            p.killpg(sig)
            return self._done(conn)
        if op == "send_stdin":
            return SendStdinOp(conn, self.select(req))
        if op == "close_stdin":
            self.select(req).close_stdin()
            return self._done(conn)
        if op == "read":
            return ReadOp(conn, req)
        if op == "write":
            return WriteOp(conn, req)
        unary = _FILE_OPS.get(op) if isinstance(op, str) else None
        if unary is None:
            raise GuestFail("invalid_argument", f"unknown op {op!r}")
        conn.send(K_RESULT, jdump(unary(req)))
        conn.finish()
        return None

    @staticmethod
    def _done(conn: Conn) -> None:
        conn.send(K_RESULT, b"{}")
        conn.finish()

    def select(self, req: dict[str, Any]) -> Proc:
        sel = req_selector(req)
        if isinstance(sel, int):
            p = self.procs.get(sel)
            if p is None:
                raise GuestFail("not_found", f"no process with pid {sel}")
            return p
        cands = [p for p in self.procs.values() if p.tag == sel]
        if not cands:
            raise GuestFail("not_found", f"no process with tag {sel!r}")
        # Prefer the running one; else the most recent that exited.
        return max(cands, key=lambda p: (p.running, p.started))

    def retire(self, p: Proc) -> None:
        if not p.background:
            self.procs.pop(p.pid, None)
            return
        self.exited_bg.append(p.pid)
        while len(self.exited_bg) > KEEP_EXITED:
            old = self.exited_bg.popleft()
            q = self.procs.get(old)
            if q is not None and q.finished:
                del self.procs[old]

    # signals and reaping

    def on_signal(self, ev: int) -> None:
        try:
            data = os.read(self.sig_r, 512)
        except BlockingIOError:
            return
        if SIGCHLD in data:
            self.reap()
        if SIGTERM in data or SIGINT in data:
            self.stop()

    def reap(self) -> None:
        # waitpid(-1) collects both our own children and orphans re-parented to us (as PID 1).
        # We are the only caller of waitpid in this process, so our children's statuses are
        # never consumed elsewhere; a pid not in our table is an orphan and is simply dropped.
        no_children = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                no_children = True
                break
            if pid == 0:
                break
            p = self.procs.get(pid)
            if p is not None and p.exit_code is None:
                p.on_exit(status)
            else:
                self.orphans_reaped += 1
        # As init, only "no children at all" means the sandbox is empty; otherwise our own
        # processes are all that SIGTERM was forwarded to.
        if self.stopping and (
            no_children or (not self.is_init and not any(p.running for p in self.procs.values()))
        ):
            self.exit()

    def stop(self) -> None:
        """SIGTERM: pass it on to every process, give them a grace period, then SIGKILL."""
        if self.stopping:
            self._kill_all(SIGKILL)
            self.exit()
            return
        self.stopping = True
        # Refuse new clients outright (ENOENT / ECONNREFUSED) instead of leaving them queued.
        self.loop.unwatch(self.lsock.fileno())
        self.lsock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self._kill_all(SIGTERM)
        self.loop.call_later(self.term_grace, self._final_kill)
        self.reap()

    def _kill_all(self, sig: int) -> None:
        if self.is_init:
            try:
                os.kill(-1, sig)  # as a namespace's init: every process in the sandbox but us
            except ProcessLookupError:
                pass
        else:
            for p in self.procs.values():
                if p.running:
                    p.killpg(sig)

    def _final_kill(self) -> None:
        self._kill_all(SIGKILL)
        self.exit()

    def exit(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os._exit(0)

    def serve(self) -> None:
        while True:
            try:
                self.loop.run_once()
            except Exception as e:  # PID 1 must survive anything a request can provoke
                log(f"loop error: {e!r}")
                time.sleep(0.01)


def _noop(signum: int, frame: object) -> None:
    pass


_FILE_OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "stat": op_stat,
    "list": op_list,
    "mkdir": op_mkdir,
    "remove": op_remove,
    "move": op_move,
}


def _ensure_stdio() -> None:
    # Pipes created later must never land on fds 0-2, or the dup2 file actions would clobber
    # them; runc may start us with any of them closed.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # Our stderr (log lines only; children get their own pipes) may be a pipe nobody drains:
    # a full pipe must drop log lines, never block PID 1.
    try:
        os.set_blocking(2, False)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    socket_path = "/run/warren/guest.sock"
    term_grace = 3.0
    it = iter(argv)
    for a in it:
        if a == "--socket":
            socket_path = next(it, socket_path)
        elif a.startswith("--socket="):
            socket_path = a.split("=", 1)[1]
        elif a == "--term-grace":
            term_grace = float(next(it, "3"))
        elif a in ("-h", "--help"):
            os.write(1, b"usage: guest.py [--socket PATH] [--term-grace SECONDS]\n")
            return 0
        else:
            log(f"unknown argument {a!r}")
            return 2
    _ensure_stdio()
    guest = Guest(socket_path, term_grace)
    guest.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))  # also runnable directly, at the cost of compiling it
