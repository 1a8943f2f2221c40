"""The new mount API (fsopen, fsconfig, fsmount, move_mount; Linux 5.2, and overlayfs'
``lowerdir+`` since 6.8), for mounts whose options do not fit the one page mount(2) copies;
and ``sync_file_range`` for a loop device's backing file."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

# Syscall numbers past 424 are the same on every architecture.
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_SET_STRING, _FSCONFIG_SET_FD, _FSCONFIG_CMD_CREATE = 1, 5, 6
_FSMOUNT_CLOEXEC = 0x1
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x2, 0x4
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def fs_mount(
    fstype: str, params: Sequence[tuple[str, str | int]], target: Path, *, nosuid: bool, nodev: bool
) -> None:
    """Mount a new ``fstype`` on ``target``, its parameters set one by one, in order: a string,
    or an int (a file descriptor: overlayfs' ``lowerdir+`` takes a detached mount, idmap.py)."""
    fs = _check(_libc.syscall(_SYS_FSOPEN, fstype.encode(), _FSOPEN_CLOEXEC), f"fsopen {fstype}")
    try:
        for key, value in params:
            if isinstance(value, int):
                ret = _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FD, key.encode(), None, value)
            else:
                ret = _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            _check(ret, f"{fstype} {key}={value}")
        _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0), f"create {fstype}")
        attrs = (_MOUNT_ATTR_NOSUID if nosuid else 0) | (_MOUNT_ATTR_NODEV if nodev else 0)
        mnt = _check(_libc.syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, attrs), f"fsmount {fstype}")
        try:
            ret = _libc.syscall(
                _SYS_MOVE_MOUNT, mnt, b"", _AT_FDCWD, str(target).encode(), _MOVE_MOUNT_F_EMPTY_PATH
            )
            _check(ret, f"move_mount {fstype} to {target}")
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


def start_writeback(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Start writing ``fd``'s dirty pages in ``nbytes`` from ``offset`` (0: to the end) to
    disk, without waiting for them (best effort)."""
    _libc.sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)
