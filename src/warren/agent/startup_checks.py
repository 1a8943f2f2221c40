"""What an agent must be able to do before it registers with the control plane.

Registration spends the host's one-time token and makes the host ``online``: creates are sent
there at once. An agent that then finds it cannot use its data dir (or its listen address) and
exits leaves an ``online`` host that answers nothing until the staleness rule marks it down,
and its token is gone. So these checks run first; each failure names what to fix, and the
token still works once it is fixed.

Checked: the data dir exists or can be made, its parents are searchable by sandbox root (an
unprivileged host uid walks them to its rootfs), a file can be written and synced there (not a
read-only or full filesystem), no other agent holds its lock, and the listen address is free.
The OCI runtime and the host programs are checked earlier, by ``entry._check_host``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
from pathlib import Path

from warren.agent import sandbox_fs

# Written and removed again by the write check.
_PROBE = ".startup-check"
# The exit status when the listen address is taken (EX_TEMPFAIL), after the message: a
# supervisor that picked the port (`warren up`) picks another and starts the agent again, its
# token unspent. Any other failed check exits 1.
EXIT_LISTEN_IN_USE = 75


class StartupCheckFailed(SystemExit):
    """The agent cannot work here; the message says why and what to fix."""


def check_before_register(data_dir: Path, listen: str) -> None:
    """Every check, in order; raises :class:`StartupCheckFailed` at the first failure."""
    if problem := _data_dir(data_dir):
        raise StartupCheckFailed(f"warren agent cannot start: {problem}")
    if error := _bind_error(listen):
        message = f"warren agent cannot start: {_listen_message(listen, error)}"
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            print(message, file=sys.stderr, flush=True)
            raise StartupCheckFailed(EXIT_LISTEN_IN_USE)
        raise StartupCheckFailed(message)


def _data_dir(data_dir: Path) -> str:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the data dir {data_dir}: {e.strerror}"
    try:
        # The agent makes the data dir itself 0711; every dir above it must already let sandbox
        # root through.
        sandbox_fs.check_traversable(data_dir.resolve().parent)
    except SystemExit as e:
        return str(e.code)
    probe = data_dir / _PROBE
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
        return f"cannot write to the data dir {data_dir}: {why}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return lock_problem(data_dir)


def lock_problem(data_dir: Path) -> str:
    """Another agent on this data dir would make ours exit once registered (``main`` takes the
    lock for good; this only looks)."""
    try:
        fd = os.open(data_dir / "agent.lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as e:
        return f"cannot open {data_dir / 'agent.lock'}: {e.strerror}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        return f"another warren agent is using {data_dir}"
    finally:
        os.close(fd)
    return ""


def listen_problem(listen: str) -> str:
    """What keeps the agent from listening on ``listen`` ("" when it is free)."""
    error = _bind_error(listen)
    return _listen_message(listen, error) if error else ""


def _listen_message(listen: str, e: Exception) -> str:
    return f"cannot listen on {listen}: {getattr(e, 'strerror', None) or e}"


def _bind_error(listen: str) -> OSError | ValueError | None:
    if listen.startswith("unix:"):
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
    except (OSError, ValueError) as e:
        return e
    return None
