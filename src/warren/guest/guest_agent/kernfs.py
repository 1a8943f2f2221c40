"""Small kernel files (procfs, cgroupfs) read in one ``read(2)``: ``os`` calls, not a file
object, whose set-up triples the cost of a read that watches repeat many times a second.

Shared with the host: the agent's socket watchdog (``warren.agent.runtime.socket_ceiling``)
reads its cgroup counters and ``/proc/<pid>/net/sockstat`` through it. Standard library only,
like the rest of the guest.
"""

import os


def read_small(path: "str | os.PathLike[str]", size: int = 4096) -> bytes:
    """The first ``size`` bytes of ``path`` (a kernel file: its whole text in one read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)
