"""File operations: streamed read and write, stat, paged listing, mkdir, remove, move.

Paths are resolved inside the sandbox's own mount namespace, so ``..`` and symlinks cannot
leave its root; the guest only refuses what is malformed.
"""

# ruff: noqa: SIM105

import _stat
import errno
import os

from . import rootops, xattrs
from .conn import Op
from .protocol import K_DATA, K_END, K_RESULT, READ_CHUNK, UMASK, GuestFail, jdump, os_fail, req_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from .conn import Conn
    from .users import User


def _open_read(path: str) -> int:
    try:
        # O_NONBLOCK so that opening a FIFO cannot hang the whole guest.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise os_fail(e, path) from e


class ReadOp(Op):
    def __init__(self, conn: "Conn", req: "dict[str, Any]", user: "User | None") -> None:
        super().__init__(conn)
        path = req_path(req)
        chunk = req.get("chunk_size", READ_CHUNK)
        if not isinstance(chunk, int) or chunk <= 0:
            raise GuestFail("invalid_argument", "chunk_size must be a positive integer")
        self.chunk = min(max(chunk, 1024), 4 << 20)
        self.fd = _as(user, lambda: _open_read(path))
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


class _Upload:
    """Where a write goes: the temp file (open, 0600) beside its target, and the final mode and
    owner (-1: the creator's)."""

    __slots__ = ("fd", "gid", "mode", "target", "tmp", "uid")

    def __init__(self, fd: int, target: str, tmp: str, mode: int, uid: int, gid: int) -> None:
        self.fd, self.target, self.tmp, self.mode, self.uid, self.gid = fd, target, tmp, mode, uid, gid


_counter = [0]
UPLOAD_FIELDS = ("target", "tmp", "mode", "uid", "gid")  # an _Upload's, beside its fd


def _prepare_write(path: str, mode: "int | None", keep_owner: bool) -> "_Upload":
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
    uid = gid = -1
    final = 0o666 & ~UMASK
    try:
        st = os.stat(target)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise os_fail(e, target) from e
    else:
        if _stat.S_ISDIR(st.st_mode):
            raise GuestFail("is_a_directory", f"{path}: is a directory")
        # Replacing the file must not silently change its permissions (nor, as root, its owner;
        # a user's file is theirs, as with any write of theirs).
        final = _stat.S_IMODE(st.st_mode)
        if keep_owner:
            uid, gid = st.st_uid, st.st_gid
    if mode is not None:
        final = mode
    _counter[0] += 1
    tmp = os.path.join(parent, f".{os.path.basename(target)}.warren-{os.getpid()}-{_counter[0]}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise os_fail(e, target) from e
    return _Upload(fd, target, tmp, final, uid, gid)


def _commit(up: "_Upload") -> None:
    os.fchmod(up.fd, up.mode)
    if up.uid >= 0:
        os.fchown(up.fd, up.uid, up.gid)
    os.rename(up.tmp, up.target)


class WriteOp(Op):
    def __init__(self, conn: "Conn", req: "dict[str, Any]", user: "User | None") -> None:
        super().__init__(conn)
        path = req_path(req)
        mode = req.get("mode")
        if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
            raise GuestFail("invalid_argument", "mode must be an integer in 0..0o7777")
        self.user = user
        self.metadata = xattrs.check(req)  # refused before the file is made
        if user is None and rootops.in_cmds():
            self.up = rootops.prepare_write(path, mode)
        elif user is None:
            self.up = _prepare_write(path, mode, keep_owner=True)
        else:
            # Made by the user (so theirs, and only where they may write); the fd comes back.
            def prepare() -> "tuple[dict[str, Any], list[int]]":
                up = _prepare_write(path, mode, keep_owner=False)
                return {"target": up.target, "tmp": up.tmp, "mode": up.mode}, [up.fd]

            res, fds = _run_as(user, prepare)
            self.up = _Upload(fds[0], res["target"], res["tmp"], res["mode"], -1, -1)
        self.target = self.up.target
        self.written = 0
        self.reserved = 0  # bytes of the file allocated by a child in the commands' cgroup

    def _reserve(self, end: int) -> None:
        """The file's pages up to ``end`` (and a step beyond) allocated by the guest's child in
        the commands' cgroup (alloc.py): the guest then writes into pages charged to the
        commands' room, not to its own, which no tenant process may fill (session 17: a 70 MiB
        upload charged to the guest let the sandbox's own OOM killer weigh it again). Where
        no cmds cgroup exists it changes nothing; where the filesystem has no fallocate the
        file is written as before; where no allocator answers (alloc.Ended: killed by the
        commands' OOM killer when their room is full), the upload fails ``no_space``."""
        from .alloc import Ended, allocate
        from .process import cmds_fds

        if not cmds_fds:
            self.reserved = -1  # gVisor: no cmds cgroup
            return
        # Doubling, up to a step: a small upload allocates what it writes (what is allocated
        # ahead is given back at the end, at a cost), a large one a request per PREALLOC_STEP.
        want = max(end, self.reserved + min(self.reserved, PREALLOC_STEP))
        fd, start = self.up.fd, self.reserved
        try:
            try:
                allocate(fd, start, want)
            except GuestFail as e:
                if e.kind != "no_space" or want == end or isinstance(e, Ended):
                    raise
                want = end  # the step does not fit: exactly what this write needs may
                allocate(fd, start, want)
        except GuestFail as e:
            if e.kind == "no_space":
                self._abort()
                raise
            self.reserved = -1  # no fallocate here: written by the guest, as before
            return
        self.reserved = want

    def on_frame(self, kind: int, payload: bytes) -> None:
        up = self.up
        if kind == K_DATA:
            if self.written + len(payload) > self.reserved >= 0:
                self._reserve(self.written + len(payload))
            view = memoryview(payload)
            try:
                while view:
                    n = os.write(up.fd, view)
                    view = view[n:]
            except OSError as e:
                self._abort()
                raise os_fail(e, self.target) from e
            self.written += len(payload)
        elif kind == K_END:
            md, target = self.metadata, self.target
            if self.reserved > self.written:  # the step past the end given back
                try:
                    os.ftruncate(up.fd, self.written)
                except OSError as e:
                    self._abort()
                    raise os_fail(e, self.target) from e

            root_in_cmds = self.user is None and rootops.in_cmds()

            def finish() -> None:
                xattrs.apply(up.fd, md, target)  # on the new file, before it replaces the old
                if root_in_cmds:
                    rootops.commit(up)
                else:
                    _commit(up)

            try:
                # As the user: the rename is theirs to make (a sticky /tmp, a dir they lost).
                as_user(self.user, finish, keep=(up.fd,))
            except GuestFail:
                self._abort()
                raise
            except OSError as e:
                self._abort()
                raise os_fail(e, self.target) from e
            os.close(up.fd)
            up.fd = -1
            up.tmp = ""
            self.reply({"bytes": self.written})
        else:
            super().on_frame(kind, payload)

    def _abort(self) -> None:
        up = self.up
        if up.fd >= 0:
            os.close(up.fd)
            up.fd = -1
        if up.tmp:
            tmp, up.tmp = up.tmp, ""
            try:
                as_user(self.user, lambda: os.unlink(tmp))
            except (OSError, GuestFail):
                pass

    def on_close(self) -> None:
        self._abort()  # the client went away mid-upload: never leave a half-written temp file


# A write's pages are allocated ahead, doubling up to steps of this (alloc.py).
PREALLOC_STEP = 8 << 20


_names: "dict[tuple[str, int], str]" = {}


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


def entry_info(path: str, st: "os.stat_result | None" = None) -> "dict[str, Any]":
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
    info = {
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
    # E2B's view of an entry (docs/e2b.md §3.2): what a symlink resolves to, and the metadata.
    if kind == "symlink":
        info.update(xattrs.link_target(path))
    metadata = xattrs.read(path)
    if metadata:
        info["metadata"] = metadata
    return info


LIST_DEFAULT = 1000  # entries per listing page when the client names no limit


LIST_MAX = 10000


# A page also stops at about this much JSON, so its frame stays small whatever the names are
# (the host agent refuses result frames past 2 MiB).
LIST_PAGE_BYTES = 1 << 20


def op_stat(req: "dict[str, Any]") -> "dict[str, Any]":
    path = req_path(req)
    try:
        # `follow`: the target's metadata (a download's size), not the link's own.
        st = os.stat(path) if req.get("follow") is True else os.lstat(path)
        return {"entry": entry_info(path, st)}
    except OSError as e:
        raise os_fail(e, path) from e


def require_dir(path: str) -> None:
    """``path`` must be a directory (after symlinks): ``not_a_directory`` otherwise."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_fail(e, path) from e
    if not _stat.S_ISDIR(st.st_mode):
        raise GuestFail("not_a_directory", f"{path}: not a directory")


def walk(top: str, depth: int, strict: bool) -> "Iterator[tuple[str, bool]]":
    """(path, is a directory) of everything under ``top`` down to ``depth`` levels, in no
    particular order. An unreadable directory below ``top`` is skipped (it does not spoil the
    rest); ``top`` itself raises when ``strict``. A directory is entered after the consumer
    has seen it, so one that stops iterating there never scans it."""
    stack = [(top, 1)]
    while stack:
        d, level = stack.pop()
        try:
            it = os.scandir(d)
        except OSError as e:
            if strict and level == 1:
                raise os_fail(e, d) from e
            continue
        with it:
            for de in it:
                try:
                    is_dir = de.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                yield de.path, is_dir
                if is_dir and level < depth:
                    stack.append((de.path, level + 1))


def op_list(req: "dict[str, Any]") -> "dict[str, Any]":
    """One page of a listing, sorted by path: at most ``limit`` entries after ``cursor`` (the
    last path of the previous page). Only the page is kept and stat'ed, so a directory of
    millions of entries costs a scan, not memory; ``next_cursor`` is set when more follow."""
    path = req_path(req)
    depth = req.get("depth", 1)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise GuestFail("invalid_argument", "depth must be an integer >= 1")
    limit = req.get("limit", LIST_DEFAULT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= LIST_MAX:
        raise GuestFail("invalid_argument", f"limit must be an integer in 1..{LIST_MAX}")
    cursor = req.get("cursor") or ""
    if not isinstance(cursor, str):
        raise GuestFail("invalid_argument", "cursor must be a string")
    require_dir(path)
    import heapq  # lazily: only listings need it (it imports nothing else)

    # The limit+1 smallest paths after the cursor (one more tells whether a next page exists).
    page = heapq.nsmallest(limit + 1, (p for p, _ in walk(path, depth, strict=True) if p > cursor))
    out: list[dict[str, Any]] = []
    size = 0
    last = cursor
    for p in page[:limit]:
        try:
            info = entry_info(p)
        except OSError:
            last = p
            continue  # vanished between readdir and lstat
        size += len(jdump(info)) + 1
        if out and size > LIST_PAGE_BYTES:
            break
        out.append(info)
        last = p
    more = last != page[-1] if page else False
    return {"entries": out, "next_cursor": last if more else None, "has_more": more}


def op_mkdir(req: "dict[str, Any]") -> "dict[str, Any]":
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


def op_remove(req: "dict[str, Any]") -> "dict[str, Any]":
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


def op_move(req: "dict[str, Any]") -> "dict[str, Any]":
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


_FILE_OPS: "dict[str, Callable[[dict[str, Any]], dict[str, Any]]]" = {
    "stat": op_stat,
    "list": op_list,
    "mkdir": op_mkdir,
    "remove": op_remove,
    "move": op_move,
}


def start_op(conn: "Conn", op: object, req: "dict[str, Any]") -> "Op | None":
    """A file operation: read and write stream (an :class:`Op`), the rest answer at once.
    With a ``user``, relative paths are under their home and the kernel checks every access
    as theirs (the work happens in a child that became the user). Without one (root, as
    before), paths must be absolute."""
    stream = op in ("read", "write")
    unary = _FILE_OPS.get(op) if isinstance(op, str) and not stream else None
    if not stream and unary is None:
        raise GuestFail("invalid_argument", f"unknown op {op!r}")
    user = acting_user(req)
    if op == "read":
        return ReadOp(conn, req, user)
    if op == "write":
        return WriteOp(conn, req, user)
    assert unary is not None
    fn = unary
    if user is not None:
        result = _run_as(user, lambda: (fn(req), []))[0]
    elif op in rootops.MAKES and rootops.in_cmds():
        result = rootops.call("unary", req)[0]
    else:
        result = fn(req)
    conn.send(K_RESULT, jdump(result))
    conn.finish()
    return None


def acting_user(req: "dict[str, Any]") -> "User | None":
    """The user a file or watch request acts as, None for root (the guest is root already: no
    child needed). With a named user, relative paths become absolute under their home."""
    if not req.get("user"):
        return None
    from .users import resolve  # lazily: only requests that name a user need it

    named = resolve(req)
    if named is None:
        return None
    _absolute(req, named.home)
    return None if named.is_root else named


def _absolute(req: "dict[str, Any]", home: str) -> None:
    """Relative paths (``path``, ``src``, ``dst``) made absolute under ``home``."""
    for key in ("path", "src", "dst"):
        p = req.get(key)
        if isinstance(p, str) and p and not p.startswith("/"):
            req[key] = home.rstrip("/") + "/" + p


def _run_as(
    user: "User", fn: "Callable[[], tuple[dict[str, Any], list[int]]]", keep: "tuple[int, ...]" = ()
) -> "tuple[dict[str, Any], list[int]]":
    from .users import run_as

    return run_as(user, fn, keep)


def as_user(user: "User | None", fn: "Callable[[], object]", keep: "tuple[int, ...]" = ()) -> None:
    """``fn()`` here (root) or in a child as ``user`` (``keep``: guest fds it needs)."""
    if user is None:
        fn()
        return

    def call() -> "tuple[dict[str, Any], list[int]]":
        fn()
        return {}, []

    _run_as(user, call, keep)


def _as(user: "User | None", open_fd: "Callable[[], int]") -> int:
    """``open_fd()`` here (root) or in a child as ``user``, whose fd comes back."""
    if user is None:
        return open_fd()
    _res, fds = _run_as(user, lambda: ({}, [open_fd()]))
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise GuestFail("internal", "the open as the user returned no file")
    return fds[0]
