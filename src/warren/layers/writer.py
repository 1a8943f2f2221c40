"""An overlayfs upper dir → an uncompressed OCI layer tar (PAX), deterministically.

The upper dir is tenant content, possibly still changing (a build step's background process):
the walk opens every directory relative to its parent with O_NOFOLLOW and checks that what it
opened is what it listed, so a swapped-in symlink can never make it read a host file.

Decisions (docs/templates.md §2):
- entries in byte order of their names, directories before their contents, so the same tree
  gives the same bytes (mtimes in whole seconds, no user/group names, no xattrs);
- a 0/0 character device → `.wh.<name>`; `trusted.overlay.opaque=y` → `<dir>/.wh..wh..opq`;
  a directory with `trusted.overlay.redirect` (renamed lower dir) is refused: overlayfs keeps
  its contents in the lower layer;
- owners are shifted back by `uid_base`; a host uid outside the mapped range (which the sandbox
  saw as `nobody`) becomes 65534 without its set-uid/set-gid bits;
- set-uid/set-gid/sticky bits kept, symlinks as links, files with several links as tar hard
  links to the first name, fifos kept, sockets and other devices skipped;
- a tenant file whose name starts with `.wh.` cannot be told from a whiteout: refused;
- the files' sizes add up to at most their filesystem's size (the sandbox's disk), else refused:
  only sparse files get there, and their holes would be written out as zeros;
- the names held at once are bounded by the platform, not by the tenant's inodes (a 16 GiB
  disk holds ~1.6 M of them): the listings of a directory and its ancestors at most
  `MAX_LISTED_BYTES` together, the first names of hard-linked files still awaiting another
  link at most `MAX_LINKED_BYTES`; past either the export is refused. Names are listed and
  sorted as bytes only (no str copy, no sort key), ~len + 42 B each.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from warren.layers.hashing import CHUNK, HashingWriter, LayerError, LayerMeta
from warren.layers.tarfmt import BLOCK, MAX_DEPTH, MAX_ID, MAX_NAME

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NOBODY = 65534
END_OF_ARCHIVE = bytes(2 * BLOCK)
# What the walk may hold, counted as a name's length plus NAME_COST (a bytes object and its
# list slot take len + 42 B): 32 MiB is ~110 000 names of 255 bytes, ~500 000 of 16.
NAME_COST = 48
MAX_LISTED_BYTES = 32 << 20
# A remembered hard link: its first name as bytes plus LINK_COST (its (dev, ino) key, a dict slot).
LINK_COST = 256
MAX_LINKED_BYTES = 16 << 20


def write_layer(upper: Path, out: BinaryIO, *, uid_base: int) -> LayerMeta:
    """Write `upper` as a layer tar to `out`; the digest and size of the bytes written."""
    root = os.open(upper, DIR_FLAGS)
    try:
        fs = os.fstatvfs(root)
        w = _Writer(HashingWriter(out), uid_base, fs.f_blocks * fs.f_frsize)
        if _xattr(root, "trusted.overlay.opaque") == b"y":
            w.entry(".wh..wh..opq", tarfile.REGTYPE, 0o644, 0, 0, 0)
        w.walk(root, "", 1)
    finally:
        os.close(root)
    w.out.write(END_OF_ARCHIVE)
    return w.out.meta()


def _xattr(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(fd, name)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _open_again(
    dfd: int, name: bytes, path: str, st: os.stat_result, flags: int
) -> tuple[int, os.stat_result]:
    """``name`` in ``dfd`` opened (``flags``) and its fstat, when it is still the entry ``st``
    (the same inode, of the same type); else LayerError: a tree that changes under an export
    is refused, never half-read."""
    try:
        fd = os.open(name, flags, dir_fd=dfd)
    except OSError as e:
        raise LayerError(f"{path!r}: changed while it was exported ({e.strerror})") from e
    try:
        now = os.fstat(fd)
        same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
        if not same or stat.S_IFMT(now.st_mode) != stat.S_IFMT(st.st_mode):
            raise LayerError(f"{path!r}: changed while it was exported")
    except BaseException:
        os.close(fd)
        raise
    return fd, now


class _Writer:
    def __init__(self, out: HashingWriter, uid_base: int, fs_bytes: int) -> None:
        self.out = out
        self.uid_base = uid_base
        self.fs_bytes = fs_bytes
        self.data_left = fs_bytes  # file contents never add up to more than their filesystem
        # (dev, ino) → (first name in the tar, links not yet seen)
        self._links: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.listed = 0  # bytes of names held by the directories being walked (NAME_COST each)
        self.linked = 0  # bytes of names held in _links (LINK_COST each)
        self._buf = bytearray(CHUNK)

    def _ids(self, st: os.stat_result) -> tuple[int, int, int]:
        uid, gid, mode = st.st_uid - self.uid_base, st.st_gid - self.uid_base, stat.S_IMODE(st.st_mode)
        if not 0 <= uid <= MAX_ID:
            uid, mode = NOBODY, mode & ~stat.S_ISUID
        if not 0 <= gid <= MAX_ID:
            gid, mode = NOBODY, mode & ~stat.S_ISGID
        return uid, gid, mode

    # fmt: off
    def entry(self, name: str, typ: bytes, mode: int, uid: int, gid: int, mtime: int,
              *, size: int = 0, link: str = "") -> None:
        # fmt: on
        if len(os.fsencode(name)) > MAX_NAME:
            raise LayerError(f"{name[:200]!r}…: path longer than {MAX_NAME} bytes")
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid = typ, mode, uid, gid
        ti.mtime, ti.size, ti.linkname = mtime, size, link
        self.out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def walk(self, dfd: int, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise LayerError(f"{prefix!r}: deeper than {MAX_DEPTH} levels")
        names = self._list(dfd, prefix)
        try:
            for name in names:
                self._one(dfd, prefix, name, depth)
        finally:
            self.listed -= sum(len(n) for n in names) + NAME_COST * len(names)

    def _list(self, dfd: int, prefix: str) -> list[bytes]:
        """``dfd``'s names as bytes, in byte order; counted in ``listed`` until the caller is
        done with them. Past MAX_LISTED_BYTES (with the ancestors' listings still held), the
        listing stops there: LayerError."""
        names: list[bytes] = []
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    name = os.fsencode(e.name)  # the str is dropped with its DirEntry
                    self.listed += len(name) + NAME_COST
                    if self.listed > MAX_LISTED_BYTES:
                        raise LayerError(
                            f"{prefix or './'!r}: too many names in this directory and the ones "
                            f"above it (more than {MAX_LISTED_BYTES >> 20} MiB of names at once)"
                        )
                    names.append(name)
        except BaseException:
            self.listed -= sum(len(n) for n in names) + NAME_COST * len(names)
            raise
        names.sort()
        return names

    def _one(self, dfd: int, prefix: str, name: bytes, depth: int) -> None:
        path = prefix + os.fsdecode(name)
        if name.startswith(b".wh."):
            raise LayerError(f"{path!r}: a name starting with .wh. cannot be stored in a layer")
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return  # removed since the listing
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._dir(dfd, name, path, st, depth)
        elif stat.S_ISCHR(mode) and st.st_rdev == 0:
            self.entry(prefix + ".wh." + os.fsdecode(name), tarfile.REGTYPE, 0o644, 0, 0, 0)
        elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISFIFO(mode)):
            return  # sockets, devices: nothing a layer should carry
        elif st.st_nlink > 1 and (link := self._linked(st)) is not None:
            uid, gid, perm = self._ids(st)
            self.entry(path, tarfile.LNKTYPE, perm, uid, gid, st.st_mtime_ns // 10**9, link=link)
        else:
            if st.st_nlink > 1:
                self._remember(st, path)
            self._leaf(dfd, name, path, st)

    def _linked(self, st: os.stat_result) -> str | None:
        """The first name of ``st``'s inode if it is in the tar already; forgotten once its
        other links have all been seen (a tree's links are then held only while pending)."""
        key = (st.st_dev, st.st_ino)
        if key not in self._links:
            return None
        first, left = self._links[key]
        if left <= 1:
            del self._links[key]
            self.linked -= len(first) + LINK_COST
        else:
            self._links[key] = (first, left - 1)
        return os.fsdecode(first)

    def _remember(self, st: os.stat_result, path: str) -> None:
        first = os.fsencode(path)  # a str of escaped bytes would take 2 B a byte
        self.linked += len(first) + LINK_COST
        if self.linked > MAX_LINKED_BYTES:
            raise LayerError(
                f"{path!r}: too many hard-linked files awaiting their other links "
                f"(more than {MAX_LINKED_BYTES >> 20} MiB of their names at once)"
            )
        self._links[(st.st_dev, st.st_ino)] = (first, st.st_nlink - 1)

    def _dir(self, dfd: int, name: bytes, path: str, st: os.stat_result, depth: int) -> None:
        cfd, now = _open_again(dfd, name, path, st, DIR_FLAGS)
        try:
            if _xattr(cfd, "trusted.overlay.redirect") is not None:
                raise LayerError(f"{path!r}: a renamed directory (overlay redirect) cannot be exported")
            uid, gid, perm = self._ids(now)
            self.entry(path + "/", tarfile.DIRTYPE, perm, uid, gid, now.st_mtime_ns // 10**9)
            if _xattr(cfd, "trusted.overlay.opaque") == b"y":
                self.entry(path + "/.wh..wh..opq", tarfile.REGTYPE, 0o644, 0, 0, 0)
            self.walk(cfd, path + "/", depth + 1)
        finally:
            os.close(cfd)

    def _leaf(self, dfd: int, name: bytes, path: str, st: os.stat_result) -> None:
        uid, gid, perm = self._ids(st)
        mtime = st.st_mtime_ns // 10**9
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except OSError as e:  # no longer a symlink
                raise LayerError(f"{path!r}: changed while it was exported ({e.strerror})") from e
            self.entry(path, tarfile.SYMTYPE, perm, uid, gid, mtime, link=os.fsdecode(target))
        elif stat.S_ISFIFO(st.st_mode):
            self.entry(path, tarfile.FIFOTYPE, perm, uid, gid, mtime)
        else:
            self._file(dfd, name, path, st)

    def _file(self, dfd: int, name: bytes, path: str, st: os.stat_result) -> None:
        fd, now = _open_again(dfd, name, path, st, READ_FLAGS)
        try:
            uid, gid, perm = self._ids(now)
            size = now.st_size
            self.data_left -= size
            if self.data_left < 0:
                # Only holes make that possible: a sparse file's size costs its owner nothing
                # and would be written here as zeros, many times the disk it was taken of.
                raise LayerError(
                    f"{path!r}: the files add up to more than their {self.fs_bytes >> 20} MiB "
                    "filesystem (sparse files are not exported)"
                )
            self.entry(path, tarfile.REGTYPE, perm, uid, gid, now.st_mtime_ns // 10**9, size=size)
            self._copy(fd, size, path)
        finally:
            os.close(fd)

    def _copy(self, fd: int, size: int, path: str) -> None:
        view = memoryview(self._buf)
        left = size
        while left:
            n = os.readv(fd, [view[: min(left, CHUNK)]])
            if not n:
                raise LayerError(f"{path!r}: shrank while it was exported")
            self.out.write(view[:n])
            left -= n
        if size % BLOCK:
            self.out.write(bytes(BLOCK - size % BLOCK))
