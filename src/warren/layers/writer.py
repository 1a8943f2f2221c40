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
  only sparse files get there, and their holes would be written out as zeros.
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


def _open_again(dfd: int, name: str, path: str, st: os.stat_result, flags: int) -> tuple[int, os.stat_result]:
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
        self._links: dict[tuple[int, int], str] = {}  # (dev, ino) → first name in the tar
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
        for name in sorted(os.listdir(dfd), key=os.fsencode):
            path = prefix + name
            if name.startswith(".wh."):
                raise LayerError(f"{path!r}: a name starting with .wh. cannot be stored in a layer")
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                self._dir(dfd, name, path, st, depth)
            elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                self.entry(prefix + ".wh." + name, tarfile.REGTYPE, 0o644, 0, 0, 0)
            elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISFIFO(mode)):
                continue  # sockets, devices: nothing a layer should carry
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in self._links:
                uid, gid, perm = self._ids(st)
                link = self._links[(st.st_dev, st.st_ino)]
                self.entry(path, tarfile.LNKTYPE, perm, uid, gid, st.st_mtime_ns // 10**9, link=link)
            else:
                if st.st_nlink > 1:
                    self._links[(st.st_dev, st.st_ino)] = path
                self._leaf(dfd, name, path, st)

    def _dir(self, dfd: int, name: str, path: str, st: os.stat_result, depth: int) -> None:
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

    def _leaf(self, dfd: int, name: str, path: str, st: os.stat_result) -> None:
        uid, gid, perm = self._ids(st)
        mtime = st.st_mtime_ns // 10**9
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except OSError as e:  # no longer a symlink
                raise LayerError(f"{path!r}: changed while it was exported ({e.strerror})") from e
            self.entry(path, tarfile.SYMTYPE, perm, uid, gid, mtime, link=target)
        elif stat.S_ISFIFO(st.st_mode):
            self.entry(path, tarfile.FIFOTYPE, perm, uid, gid, mtime)
        else:
            self._file(dfd, name, path, st)

    def _file(self, dfd: int, name: str, path: str, st: os.stat_result) -> None:
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
