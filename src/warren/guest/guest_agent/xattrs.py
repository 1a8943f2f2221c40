"""E2B's file metadata as extended attributes, and what a symlink points to (for the E2B
compatibility of the file operations, docs/e2b.md §3.2).

Metadata lives in the ``user.e2b.`` namespace of a file's extended attributes: a write may set
it on the new file, and every entry reports it (prefix stripped). Attributes set inside the
sandbox by other means are reported too, within the same bounds as a write (extra keys and
oversize values are left out), so an entry stays small whatever a process put there.
"""

import _stat
import errno
import os

from .protocol import GuestFail, os_fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "user.e2b."
MAX_KEYS = 32
MAX_KEY = 128
MAX_VALUE = 4096
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")


def _key_ok(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY and all(c in _KEY_CHARS for c in key)


def _value_ok(value: str) -> bool:
    return len(value) <= MAX_VALUE and all(" " <= c <= "~" for c in value)


def check(req: "dict[str, Any]") -> "dict[str, str]":
    """A write's ``metadata``: a map of lowercase token keys to printable ASCII values, bounded
    (``invalid_argument`` otherwise); absent: none."""
    md = req.get("metadata")
    if md is None:
        return {}
    if not isinstance(md, dict) or len(md) > MAX_KEYS:
        raise GuestFail("invalid_argument", f"metadata must be an object of at most {MAX_KEYS} keys")
    for k, v in md.items():
        if not isinstance(k, str) or not _key_ok(k) or not isinstance(v, str) or not _value_ok(v):
            raise GuestFail(
                "invalid_argument",
                f"metadata keys are lowercase HTTP tokens of at most {MAX_KEY} characters and values "
                f"printable ASCII of at most {MAX_VALUE}",
            )
    return md


def apply(fd: int, md: "dict[str, str]", what: str) -> None:
    """Set ``md`` on the open file ``fd`` (a new file: nothing to remove first)."""
    for k, v in md.items():
        try:
            os.setxattr(fd, PREFIX + k, v.encode("ascii"))
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                msg = f"{what}: no extended attributes on this filesystem"
                raise GuestFail("invalid_argument", msg) from e
            raise os_fail(e, what) from e


def read(path: str) -> "dict[str, str]":
    """The ``user.e2b.*`` attributes of ``path`` (a symlink's target's), within the bounds."""
    try:
        names = os.listxattr(path)
    except OSError:
        return {}  # none, unsupported, or a dangling link
    out: dict[str, str] = {}
    for name in names:
        if not name.startswith(PREFIX) or len(out) >= MAX_KEYS:
            continue
        key = name[len(PREFIX) :]
        try:
            raw = os.getxattr(path, name)
        except OSError:
            continue
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        if _key_ok(key) and _value_ok(value):
            out[key] = value
    return out


def _kind(mode: int) -> str:
    if _stat.S_ISDIR(mode):
        return "dir"
    if _stat.S_ISREG(mode):
        return "file"
    return "other"


def link_target(path: str) -> "dict[str, Any]":
    """What the symlink ``path`` points to, resolved inside the sandbox: its absolute path, type
    and permission bits (type "" when it dangles)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"target_type": "", "target_mode": 0, "resolved_target": path}
    return {
        "target_type": _kind(st.st_mode),
        "target_mode": _stat.S_IMODE(st.st_mode),
        "resolved_target": os.path.realpath(path),
    }
