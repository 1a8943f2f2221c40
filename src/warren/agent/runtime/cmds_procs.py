"""The processes of a runc/crun sandbox's ``cmds`` (cmds_cgroup.py), pinned and killed exactly.

The agent's two kills of tenant processes, past the socket ceiling (socket_ceiling.py) and at
the memory limit (cmds_oom.py), share these steps. A pid read from ``cgroup.procs`` is pinned by
a pidfd before its ``/proc`` entries are read and checked alive through it after (a pid is not
reused before its process is reaped), and the kill goes through the same pidfd: exactly the
process counted is killed, and only a process of ``cmds`` (the guest is in the sandbox's own
cgroup, never in ``cmds``). Only host cgroupfs and ``/proc`` files are read; no tenant path is
resolved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("warren.agent")

KILL_WAIT = 1.0  # seconds to wait for a victim's exit before reading the level again
LOG_BURST = 8  # kill lines per sandbox, then one per LOG_EVERY seconds (the rest counted)
LOG_EVERY = 10.0


def socket_inodes(pid: int) -> Iterator[int]:
    """The socket inodes of ``pid``'s descriptors (link targets only: nothing is followed)."""
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        with contextlib.suppress(OSError):
            link = os.readlink(f"{base}/{fd}")
            if link.startswith("socket:["):
                yield int(link[8:-1])


def pids(procs: Path) -> list[int]:
    """The processes listed in a ``cgroup.procs`` (OSError: the cgroup is going)."""
    return [int(p) for p in procs.read_text().split()]


def init_of(procs: Path) -> int:
    """The guest: the process of a sandbox's own cgroup (its ``cgroup.procs``) that is the
    container's init (``NSpid`` of two levels, ours and the container's, the last 1). Not the
    first pid listed: a command the guest forked is listed there too until it enters ``cmds``,
    a lower pid once the host's pids wrapped (ValueError: no init listed; OSError: the cgroup is
    going)."""
    for pid in pids(procs):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
            i = status.find(b"\nNSpid:")
            if i >= 0 and status[i + 7 :].split(b"\n", 1)[0].split()[1:] == [b"1"]:
                return pid
    raise ValueError(f"no init in {procs}")


def in_cgroup(line: str, cgroup: str) -> bool:
    """Whether a line of /proc/<pid>/cgroup puts the process in ``cgroup`` of the memory tree."""
    _, controllers, path = line.split(":", 2)
    return path == cgroup and "memory" in controllers.split(",")


def member(pid: int, cmds: str) -> bool:
    """Whether ``pid``'s process is in ``cmds`` (its memory cgroup path, as /proc gives it): its
    leader's, or, for a leader that exited alone (a zombie, shown in "/", its descriptors gone
    from /proc/<pid>/fd, while its threads live on and stay in cgroup.procs), a thread's."""
    if any(in_cgroup(x, cmds) for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()):
        return True
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/task/{tid}/cgroup").read_text().splitlines()
            if any(in_cgroup(x, cmds) for x in lines):
                return True
    return False


def pin(pid: int, cmds: str) -> int | None:
    """A pidfd of ``pid`` if it is a process of ``cmds`` (read after the pidfd: the pid is the
    process's); None if it is gone or elsewhere."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if member(pid, cmds):
            return pidfd
    except OSError:
        pass
    os.close(pidfd)
    return None


def alive(pidfd: int) -> None:
    """Raises OSError (ProcessLookupError) if the pinned process has exited."""
    signal.pidfd_send_signal(pidfd, 0)


def wait_exit(pidfd: int, timeout: float = KILL_WAIT) -> bool:
    """Until the process has exited (its memory, descriptors and sockets freed) or ``timeout``;
    whether it exited."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    with contextlib.suppress(InterruptedError):
        return bool(p.poll(timeout * 1000))
    return False


def wait_all(pidfds: list[int], deadline: float) -> None:
    """Until every process has exited, :data:`KILL_WAIT` or ``deadline``."""
    p = select.poll()
    for fd in pidfds:
        p.register(fd, select.POLLIN)
    left = set(pidfds)
    until = min(deadline, time.monotonic() + KILL_WAIT)
    while left and (wait := until - time.monotonic()) > 0:
        with contextlib.suppress(InterruptedError):
            for fd, _ in p.poll(wait * 1000):
                p.unregister(fd)
                left.discard(fd)


def kill_all(procs: Path, cmds: str, deadline: float) -> int:
    """SIGKILL to every process of ``cmds`` (pinned by pidfd, checked to be in it), again for
    those started meanwhile (a forker's), until none is new or ``deadline``; the number killed."""
    killed: set[int] = set()
    while time.monotonic() < deadline:
        try:
            listed = pids(procs)
        except (OSError, ValueError):
            break  # the sandbox is going
        # one already signalled and still listed (exiting, a zombie) is not waited on again
        pinned = {pid: fd for pid in listed if pid not in killed and (fd := pin(pid, cmds)) is not None}
        if not pinned:
            break
        try:
            for pid, fd in pinned.items():
                with contextlib.suppress(OSError):  # exited meanwhile
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    killed.add(pid)
            wait_all(list(pinned.values()), deadline)
        finally:
            for fd in pinned.values():
                os.close(fd)
    return len(killed)


@dataclass
class LogBucket:
    """A sandbox's allowance of kill lines in the agent's log: :data:`LOG_BURST`, then one per
    :data:`LOG_EVERY` seconds; what it does not allow is counted, and told with the next line."""

    tokens: float = LOG_BURST
    filled_at: float = field(default_factory=time.monotonic)
    suppressed: int = 0

    def warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        self.tokens = min(LOG_BURST, self.tokens + (now - self.filled_at) / LOG_EVERY)
        self.filled_at = now
        if self.tokens < 1:
            self.suppressed += 1
            return
        self.tokens -= 1
        log.warning(fmt + " suppressed=%d", *args, self.suppressed)
        self.suppressed = 0
