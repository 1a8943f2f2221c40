"""The ``watch`` op: a directory's changes through inotify (``ctypes``), streamed as events.

REQ ``{"op":"watch","path","recursive","user"?}`` → RESULT ``{"dirs": n}`` once every watch is
in place, then EVENT frames ``{"events": [...], "overflow": bool}`` until the client hangs up
(or END when the watched directory itself goes away). Each event is
``{"type": create|write|remove|rename|chmod, "path", "old_path"?, "entry"?, "ts_ns"}``.

Bounds: at most ``MAX_WATCH_DIRS`` inotify watches per sandbox (below the kernel's per-user
counts, which are the sandbox's own: agent/slot_userns.py), ``MAX_WATCH_OPS`` watch
connections, ``MAX_PENDING`` events waiting for a slow client, and in bytes ``PENDING_BYTES``
per watch and ``PENDING_TOTAL`` for all of them (past any of these, events are dropped and the
next frame says ``overflow``); a watch leaves at most ``SEND_AHEAD`` in its connection's buffer.
"""

import os
import sys
import time

from .conn import Op
from .loop import EPOLLIN, Loop
from .protocol import K_END, K_EVENT, K_RESULT, GuestFail, jdump, os_fail, req_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .conn import Conn


MAX_WATCH_DIRS = 8192  # inotify watches per sandbox, over all its watch connections


MAX_WATCH_OPS = 32  # concurrent watch connections per sandbox (each holds an inotify fd)


MAX_PENDING = 4096  # events held for a client that reads slowly; past it: overflow


# What the guest holds for watch clients is its own memory (charged above `cmds`, within its
# 24 MiB: agent/runtime/cmds_cgroup.py), so held events are counted in bytes too, each with its
# Python objects: per watch PENDING_BYTES, all watches together PENDING_TOTAL (past either:
# overflow). Counted in events only, 5 000 creates of ~3.9 KiB paths under one unread watch held
# 55 MiB, and 32 such watches killed a 256 MiB sandbox's guest (session 17, W2-D,
# test_attack_session17_guest_watch).
PENDING_BYTES = 2 << 20
PENDING_TOTAL = 8 << 20
EVENT_COST = 280  # an event's dict, timestamp, slots in pending and last: measured 278
SEND_AHEAD = 64 << 10  # a watch sends no more while its connection holds this much unsent
_held = [0]  # what every watch's pending events cost together


BATCH = 64  # events per EVENT frame, fewer once FRAME_BYTES of them are in one
FRAME_BYTES = 32 << 10  # of events' cost per frame (the frame is ~2x: entry's path and name)


COALESCE = 0.004  # seconds events wait to be merged with later ones (bursts → one event)


IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
)  # fmt: skip
_ALL_LEVELS = 1 << 30  # a recursive watch's depth: every level below its root
_EVENT_HDR = 16  # struct inotify_event: int wd; u32 mask, cookie, len; then the name


class _Libc:
    """inotify through ctypes, loaded on the first watch (not on the guest's startup path)."""

    lib: "Any" = None
    errno: "Any" = None

    @classmethod
    def get(cls) -> "Any":
        if cls.lib is None:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            cls.lib = lib
            cls.errno = ctypes.get_errno
        return cls.lib


def _oserror(what: str) -> OSError:
    e = _Libc.errno()
    return OSError(e, os.strerror(e), what)


_active = [0, 0]  # [watch connections, inotify watches] in this sandbox


class WatchOp(Op):
    def __init__(self, conn: "Conn", req: "dict[str, Any]", user: "Any") -> None:
        super().__init__(conn)
        self.root = req_path(req)
        self.recursive = req.get("recursive", True) is not False
        self.fd = -1
        self.wds: dict[int, str] = {}
        self.paths: dict[str, int] = {}
        self.pending: list[dict[str, Any] | None] = []
        self.last: dict[str, int] = {}  # path → index in pending of its latest event
        self.live = 0  # events in pending (replaced ones are None)
        self.held = 0  # what the live events in pending cost (sizeof their paths + EVENT_COST)
        self.moves: dict[int, tuple[str, bool]] = {}  # cookie → (old path, is a dir)
        self.overflow = False
        self.timer: list[Any] | None = None
        self.ended = False
        _check_readable(self.root, user)
        if _active[0] >= MAX_WATCH_OPS:
            raise GuestFail("too_large", f"at most {MAX_WATCH_OPS} watches at once per sandbox")
        fd = _Libc.get().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = _oserror("inotify_init1")
            if e.errno == 24:  # EMFILE: the sandbox's own count of instances is used up
                raise GuestFail("too_large", "no inotify instance left in this sandbox; stop a watch first")
            raise os_fail(e, "inotify")
        self.fd = fd
        _active[0] += 1
        try:
            self._add_tree(self.root, report=False, strict=True)
        except BaseException:
            self._release()
            raise
        conn.g.loop.watch(fd, EPOLLIN, self.on_inotify)
        conn.send(K_RESULT, jdump({"dirs": len(self.wds)}))

    # ---- watches

    def _add(self, path: str, strict: bool) -> bool:
        """One directory's watch; False (and overflow) when the cap is reached mid-watch."""
        if path in self.paths:
            return True
        if _active[1] >= MAX_WATCH_DIRS:
            if strict:
                raise GuestFail(
                    "too_large",
                    f"{self.root}: more than {MAX_WATCH_DIRS} directories to watch in this sandbox",
                )
            self.overflow = True
            return False
        wd = _Libc.get().inotify_add_watch(self.fd, os.fsencode(path), _MASK)
        if wd < 0:
            e = _oserror(path)
            if strict and path == self.root:
                raise os_fail(e, path)
            if e.errno == 28 and strict:  # ENOSPC: the sandbox's own max_user_watches is used up
                raise GuestFail("too_large", f"{self.root}: this sandbox has no inotify watches left")
            if e.errno == 28:
                self.overflow = True
            return False  # vanished or not a directory any more: nothing to watch
        if wd not in self.wds:
            _active[1] += 1
        else:
            self.paths.pop(self.wds[wd], None)
        self.wds[wd] = path
        self.paths[path] = wd
        return True

    def _add_tree(self, top: str, report: bool, strict: bool) -> None:
        """Watch ``top`` (and, recursive, every directory below). ``report``: entries found are
        reported as created (they appeared before their directory's watch was in place)."""
        if not self._add(top, strict):
            return
        if not self.recursive:
            return
        from .files import walk

        for path, is_dir in walk(top, _ALL_LEVELS, strict=False):
            if report:
                self._queue("create", path)
            if is_dir and not self._add(path, strict):
                return

    def _drop_tree(self, top: str) -> None:
        prefix = top.rstrip("/") + "/"
        for p in [p for p in self.paths if p == top or p.startswith(prefix)]:
            wd = self.paths.pop(p)
            del self.wds[wd]
            _active[1] -= 1
            _Libc.get().inotify_rm_watch(self.fd, wd)

    def _moved_tree(self, old: str, new: str) -> None:
        """A watched directory renamed inside the tree: its watches stay, their paths change."""
        prefix = old.rstrip("/") + "/"
        for p in [p for p in self.paths if p == old or p.startswith(prefix)]:
            wd = self.paths.pop(p)
            q = new + p[len(old) :]
            self.paths[q] = wd
            self.wds[wd] = q

    # ---- inotify events

    def on_inotify(self, ev: int) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        off = 0
        while off + _EVENT_HDR <= len(data):
            wd = int.from_bytes(data[off : off + 4], "little", signed=True)
            mask = int.from_bytes(data[off + 4 : off + 8], "little")
            cookie = int.from_bytes(data[off + 8 : off + 12], "little")
            n = int.from_bytes(data[off + 12 : off + 16], "little")
            name = data[off + 16 : off + 16 + n].split(b"\0", 1)[0]
            off += _EVENT_HDR + n
            self._one(wd, mask, cookie, os.fsdecode(name))
        # A MOVED_FROM without its MOVED_TO in the same read: moved out of the tree.
        for old, is_dir in self.moves.values():
            self._queue("remove", old)
            if is_dir:
                self._drop_tree(old)
        self.moves.clear()
        self._schedule()

    def _one(self, wd: int, mask: int, cookie: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.overflow = True
            return
        d = self.wds.get(wd)
        if d is None:
            return
        if mask & IN_IGNORED:
            del self.wds[wd]
            if self.paths.get(d) == wd:
                del self.paths[d]
            _active[1] -= 1
            if d == self.root:
                self.ended = True
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            if d == self.root:
                self._queue("remove", d)
                self.ended = True
            return
        path = d + "/" + name if d != "/" else "/" + name
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_CREATE:
            self._queue("create", path)
            if is_dir and self.recursive:
                self._add_tree(path, report=True, strict=False)
        elif mask & IN_MOVED_FROM:
            self.moves[cookie] = (path, is_dir)
        elif mask & IN_MOVED_TO:
            moved = self.moves.pop(cookie, None)
            if moved is not None:
                self._queue("rename", path, moved[0])
                if is_dir:
                    self._moved_tree(moved[0], path)
            else:
                self._queue("create", path)
                if is_dir and self.recursive:
                    self._add_tree(path, report=True, strict=False)
        elif mask & IN_DELETE:
            self._queue("remove", path)
        elif mask & (IN_MODIFY | IN_CLOSE_WRITE):
            if not is_dir:
                self._queue("write", path)
        elif mask & IN_ATTRIB:
            self._queue("chmod", path)

    def _queue(self, kind: str, path: str, old: "str | None" = None) -> None:
        """Add an event; a write or chmod right after the same one for that path (nothing else
        for the path in between) replaces it, moved to the end: the last one counts, and order
        across paths stays the order of each path's latest event."""
        i = self.last.get(path)
        if i is not None:
            prev = self.pending[i]
            if prev is not None and prev["type"] == kind and kind in ("write", "chmod", "create"):
                self.pending[i] = None
                self._unhold(prev)
        cost = _cost(path, old)
        if self.live >= MAX_PENDING or self.held + cost > PENDING_BYTES or _held[0] + cost > PENDING_TOTAL:
            self.overflow = True
            return
        ev: dict[str, Any] = {"type": kind, "path": path, "ts_ns": time.time_ns()}
        if old is not None:
            ev["old_path"] = old
            self.last.pop(old, None)
        self.last[path] = len(self.pending)
        self.pending.append(ev)
        self.live += 1
        self.held += cost
        _held[0] += cost
        if len(self.pending) >= 2 * MAX_PENDING:
            self._compact()  # replaced events leave holes: one file rewritten in a loop

    def _unhold(self, ev: "dict[str, Any]") -> int:
        """``ev`` leaves pending (replaced or sent); what it cost."""
        cost = _cost(ev["path"], ev.get("old_path"))
        self.live -= 1
        self.held -= cost
        _held[0] -= cost
        return cost

    def _compact(self) -> None:
        live = [e for e in self.pending if e is not None]
        self.pending = list(live)
        self.last = {e["path"]: i for i, e in enumerate(live)}

    # ---- sending

    def _schedule(self) -> None:
        if self.timer is None and (self.pending or self.overflow or self.ended):
            self.timer = self.conn.g.loop.call_later(COALESCE, self._flush)

    def _flush(self) -> None:
        self.timer = None
        conn = self.conn
        if conn.closed:
            return
        # Frames go out while the connection's buffer is short of SEND_AHEAD; the rest stays in
        # pending (counted, bounded) until it drains, rather than all of it in the buffer.
        done = 0
        while len(conn.out) < SEND_AHEAD:
            batch, done = self._next_batch(done)
            if batch or self.overflow:
                conn.send(K_EVENT, jdump({"events": batch, "overflow": self.overflow}))
                self.overflow = False
            if done >= len(self.pending):
                break
        del self.pending[:done]
        self._compact()
        if self.pending or self.overflow:
            conn.on_drain = self._flush  # the client is slow: hold (bounded) until it drains
            return
        if self.ended:
            conn.send(K_END)
            conn.finish()

    def _next_batch(self, start: int) -> "tuple[list[dict[str, Any]], int]":
        """The live events from ``start`` for one frame, out of pending's count and bytes, with
        their entries as they are now; and where the next frame starts."""
        from .files import entry_info

        batch: list[dict[str, Any]] = []
        size = 0
        i = start
        while i < len(self.pending) and len(batch) < BATCH and size < FRAME_BYTES:
            e = self.pending[i]
            i += 1
            if e is None:
                continue
            size += self._unhold(e)
            if e["type"] != "remove":
                try:  # noqa: SIM105 (contextlib is not imported on the guest's paths)
                    e["entry"] = entry_info(e["path"])
                except OSError:
                    pass  # gone again already: the event says what happened, not what is
            batch.append(e)
        return batch, i

    def on_close(self) -> None:
        Loop.cancel(self.timer)
        self.timer = None
        self._release()

    def _release(self) -> None:
        if self.fd >= 0:
            self.conn.g.loop.unwatch(self.fd)  # never raises (it suppresses OSError itself)
            os.close(self.fd)  # the kernel drops every watch of this fd with it
            self.fd = -1
            _active[0] -= 1
            _active[1] -= len(self.wds)
            self.wds.clear()
            self.paths.clear()
        _held[0] -= self.held  # the events a closed watch held go with it
        self.held = 0


def _cost(path: str, old: "str | None") -> int:
    """An event's share of the guest's memory: its strings as Python holds them (a path of
    non-ASCII names takes 2-4 bytes a character) and its objects."""
    return sys.getsizeof(path) + (sys.getsizeof(old) if old is not None else 0) + EVENT_COST


def _check_readable(path: str, user: "Any") -> None:
    """The directory must exist and be listable, as ``user`` when one is named."""

    from .files import as_user, require_dir

    def check() -> None:
        require_dir(path)
        try:
            os.scandir(path).close()
        except OSError as e:
            raise os_fail(e, path) from e

    as_user(user, check)


def start_op(conn: "Conn", req: "dict[str, Any]") -> "Op":
    from .files import acting_user

    return WatchOp(conn, req, acting_user(req))
