"""Id-mapped lower layers: a runc/crun sandbox sees the canonical layers as its own uid range.

Layers and templates are stored owned by the canonical range (templates.MAPPED_BASE + N), but
every runc/crun sandbox runs as a host range of its own (templates.uid_base of its slot): the
kernel counts some things per host uid (user_struct: unix descriptors in flight, ...), and one
shared range let one sandbox use up every other's count. Per sandbox, each lower layer is
cloned as a detached mount (open_tree OPEN_TREE_CLONE) with an id map (mount_setattr
MOUNT_ATTR_IDMAP) taking the canonical range to the sandbox's, and the clones are handed to
overlayfs by descriptor (``lowerdir+``, fsmount.fs_mount). Overlayfs itself cannot be id-mapped
(EINVAL), but it accepts id-mapped lowers; the upper is made with the sandbox's owners directly.

The id map is a user namespace whose uid/gid map is "<from> <to> 65536" (and host root as
itself). The agent never forks (gRPC's fork handlers), so the namespace maker (ns_maker.py
``user``) makes it, once per (from, to) pair, when the slot is made (slot_userns.make, ahead
of creates for pooled slots); it is kept as a bind mount under slot_userns.USERNS_DIR (one per
slot base) and opened per create. A clone costs ~0.06 ms per layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from warren.agent import slot_userns

_SYS_OPEN_TREE, _SYS_MOUNT_SETATTR = 428, 442  # the same on every architecture
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
_AT_EMPTY_PATH, _AT_SYMLINK_NOFOLLOW = 0x1000, 0x100
_MOUNT_ATTR_IDMAP = 0x100000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


async def open_userns(from_base: int, to_base: int) -> int:
    """A descriptor (the caller closes it) of the user namespace mapping ``from_base``.. to
    ``to_base``.. (made by the slot's make; else here, the first time it is asked for)."""
    path = await slot_userns.ensure_idmap(from_base, to_base)
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def clone(path: Path, userns_fd: int) -> int:
    """A detached mount of ``path`` (not its submounts) seen through ``userns_fd``'s id map."""
    fd = _check(
        _libc.syscall(_SYS_OPEN_TREE, -100, str(path).encode(), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC),
        f"open_tree {path}",
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        ret = _libc.syscall(
            _SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
        )
        _check(ret, f"id-mapping {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def clones(lower: Sequence[Path], userns_fds: Sequence[int | None]) -> Iterator[list[str | int]]:
    """Each of ``lower`` as overlayfs' ``lowerdir+`` takes it: an id-mapped detached mount
    where its namespace is given, else its path. The mounts are closed on leaving: the
    overlay holds its own references once made."""
    out: list[str | int] = []
    try:
        for path, ufd in zip(lower, userns_fds, strict=True):
            out.append(str(path) if ufd is None else clone(path, ufd))
        yield out
    finally:
        for item in out:
            if isinstance(item, int):
                os.close(item)
