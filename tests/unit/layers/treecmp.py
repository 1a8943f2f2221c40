"""A directory tree as comparable data (the layer tests compare trees before and after)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError as e:
        assert e.errno == errno.ENODATA, e
        return False


def snapshot(root: Path, uid_base: int) -> dict[str, tuple[object, ...]]:
    """path → (kind, mode, uid, gid, mtime, content or target, link group), owners unshifted."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            ids = (stat.S_IMODE(st.st_mode), st.st_uid - uid_base, st.st_gid - uid_base)
            mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", *ids, mtime, _opaque(p))
            elif stat.S_ISCHR(st.st_mode):
                out[rel] = ("whiteout", st.st_rdev)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", *ids, mtime, os.readlink(p))
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo", *ids, mtime)
            else:
                group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                out[rel] = ("file", *ids, mtime, p.read_bytes(), group)
    return out
