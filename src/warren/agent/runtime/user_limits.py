"""The host's per-user kernel limits that every runc/crun sandbox would otherwise share.

Every sandbox maps its uids onto the same host range (bundle.py: container uid 0 is host uid
MAPPED_BASE in all of them; docs/security.md, "One uid range for all sandboxes"), and the kernel
keeps a few counts per host uid (its ``user_struct``), not per user namespace: session 10 moved
the ucount-based ones (inotify, queues, signals) onto each slot's own namespace owner, but these
stay shared. Found in session 14, from inside one sandbox, as ``nobody``:

* ``fs.epoll.max_user_watches`` (5.5 M here): two processes holding 2000 epoll instances over
  2000 eventfds each (1.15 GB of their sandbox's memory) used them all up, and every other
  sandbox's ``nobody`` got ENOSPC from ``epoll_ctl``. As root the same reaches the guest (PID
  1, an epoll loop) of every sandbox on the host (not run: the machine was shared).
* ``fs.pipe-user-pages-soft`` (16384 pages): 64 pipes grown to 1 MiB left every other
  sandbox's pipes of that uid at their smallest size (F_SETPIPE_SZ: EPERM).

Both figures were set before the kernel charged epoll items and pipe buffers to the memory
cgroup; now it does, so a sandbox's memory limit bounds what it can hold and the per-user cap
only lets one tenant deny the others. The agent lifts them: the watches to more than the host's
memory could hold (an epoll item alone is 128 bytes), the pipe soft limit to none (0). They are
host-wide: local users outside any cgroup are then bounded by memory only, as for most kernel
objects. (A third count, descriptors in flight over unix sockets, is checked against the
sender's RLIMIT_NOFILE and has no setting: left open, see docs/security.md.)
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("warren.agent")

EPOLL_WATCHES = "/proc/sys/fs/epoll/max_user_watches"
PIPE_PAGES_SOFT = "/proc/sys/fs/pipe-user-pages-soft"
EPOLL_ITEM_BYTES = 128  # the smallest charge of one watch (struct epitem); the real one is more


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write(path: str, value: int, was: int) -> bool:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:  # not root (a unit test), or a read-only /proc/sys (in a container)
        log.warning("event=user_limit_unchanged path=%s error=%s", path, e)
        return False
    log.warning("event=user_limit_lifted path=%s was=%d now=%d", path, was, value)
    return True


def host_memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def lift_shared_user_limits(epoll_path: str = EPOLL_WATCHES, pipe_path: str = PIPE_PAGES_SOFT) -> list[str]:
    """Raise the per-user limits of the module docstring where they are lower; the paths changed.
    Never lowers a limit an operator set higher."""
    changed = []
    watches = host_memory_bytes() // EPOLL_ITEM_BYTES
    current = _read_int(epoll_path)
    if current is not None and current < watches and _write(epoll_path, watches, current):
        changed.append(epoll_path)
    current = _read_int(pipe_path)
    if current is not None and current != 0 and _write(pipe_path, 0, current):
        changed.append(pipe_path)
    return changed
