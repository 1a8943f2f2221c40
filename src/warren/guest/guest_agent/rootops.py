"""Root's file operations that make (or unmake) inodes and dentries, done in ``cmds``.

A file operation as another user runs in a child of that user in ``cmds`` (users.run_as); one as
root ran in the guest itself, so what it made (~3 KiB of kernel memory a directory: inode and
dentry) was charged to the guest's own cgroup: a mkdir flood through the API took the guest to
32-38 MiB, past its 24 MiB reserve (session 17, W2-D). Now root's mkdir, move, remove and an
upload's temp file and its rename run in the guest's long-lived child in ``cmds`` (alloc.py,
which also allocates uploads' pages), without a fork per operation: the functions of files.py
themselves, in a copy of the guest (its mount namespace, root, cwd and umask), so every path
resolves exactly as before. Under gVisor (no ``cmds``) the guest does them itself, as before.

A child that is gone or does not answer fails the operation ``no_space`` (alloc.Ended); the
guest never does it itself instead.
"""

import os

from .protocol import GuestFail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .files import _Upload

MAKES = frozenset(("mkdir", "remove", "move"))  # of files' unary operations


def in_cmds() -> bool:
    """Whether commands run in a ``cmds`` cgroup of their own (not under gVisor)."""
    from .process import cmds_fds

    return bool(cmds_fds)


def call(fn: str, args: "dict[str, Any]", fds: "tuple[int, ...]" = ()) -> "tuple[dict[str, Any], list[int]]":
    """``ROOT_OPS[fn](args, fds)`` in the child in ``cmds`` (alloc.call)."""
    from .alloc import call as child_call

    return child_call(fn, args, fds)


def prepare_write(path: str, mode: "int | None") -> "_Upload":
    """files._prepare_write as root (keeping the replaced file's owner), in the child: the temp
    file's fd comes back."""
    from .files import UPLOAD_FIELDS, _Upload

    res, fds = call("prepare_write", {"path": path, "mode": mode})
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise GuestFail("internal", "the temp file was not returned")
    return _Upload(fds[0], *(res[k] for k in UPLOAD_FIELDS))


def commit(up: "_Upload") -> None:
    """files._commit (mode, owner, the rename over the target) in the child."""
    from .files import UPLOAD_FIELDS

    call("commit", {k: getattr(up, k) for k in UPLOAD_FIELDS}, (up.fd,))


# ------------------------------------------------------------------------- in the child


def _unary(req: "dict[str, Any]", fds: "list[int]") -> "tuple[dict[str, Any], list[int]]":
    from .files import _FILE_OPS

    op = req.get("op")
    if not isinstance(op, str) or op not in MAKES:
        raise GuestFail("invalid_argument", f"not a root operation: {op!r}")
    return _FILE_OPS[op](req), []


def _prepare(args: "dict[str, Any]", fds: "list[int]") -> "tuple[dict[str, Any], list[int]]":
    from .files import UPLOAD_FIELDS, _prepare_write

    up = _prepare_write(args["path"], args["mode"], keep_owner=True)
    return {k: getattr(up, k) for k in UPLOAD_FIELDS}, [up.fd]


def _commit(args: "dict[str, Any]", fds: "list[int]") -> "tuple[dict[str, Any], list[int]]":
    from .files import UPLOAD_FIELDS, _commit, _Upload

    if len(fds) != 1:
        raise GuestFail("invalid_argument", "commit needs the temp file")
    _commit(_Upload(fds[0], *(args[k] for k in UPLOAD_FIELDS)))
    return {}, []


# What the child runs (alloc._serve_op): a fixed table, each (args, fds) -> (JSON, fds).
ROOT_OPS: "dict[str, Callable[[dict[str, Any], list[int]], tuple[dict[str, Any], list[int]]]]" = {
    "unary": _unary,
    "prepare_write": _prepare,
    "commit": _commit,
}
