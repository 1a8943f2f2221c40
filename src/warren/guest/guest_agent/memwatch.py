"""A user-space OOM killer, for runtimes whose kernel does not enforce the memory limit (gVisor).

Under gVisor the sandbox's memory cgroup is on the host, around gVisor's own kernel (the
sentry): at its limit the host's OOM killer would end the sentry, that is the whole sandbox. So
the agent gives that cgroup a fixed headroom above the tenant's limit (runtime/gvisor.py) and
the guest, PID 1 inside, enforces the tenant's limit itself, as Linux would in a runc sandbox:
when the memory in use in the sandbox (``MemTotal - MemFree`` of gVisor's ``/proc/meminfo``:
every process's memory, its page cache and tmpfs) passes the limit, the process with the
largest resident set (never PID 1) gets SIGKILL, and the next one if that was not enough.

Polling, not an event: gVisor has no memory pressure notification. The interval shrinks as the
usage nears the limit (the time an allocation at :data:`MAX_RATE` would need to reach it,
between :data:`MIN_INTERVAL` and :data:`MAX_INTERVAL`), so an idle sandbox costs ~10 reads a
second and an allocation loop is caught within a few MiB of the limit.

The limit is a file the agent writes before each start (``--memory-limit-file``; bytes, in
decimal), re-read every second: a sandbox restored from another's memory image (a fork) keeps
this thread but gets its own limit. Root-owned and read-only to the sandbox.
"""

import _thread
import os
import signal
import time

from .protocol import log

MAX_RATE = 1 << 30  # bytes/s: faster than an allocation loop runs under gVisor's ptrace platform
MIN_INTERVAL = 0.005
MAX_INTERVAL = 0.1
LIMIT_REREAD = 1.0
AFTER_KILL = 0.05  # let the victim's memory go back before measuring again


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def used_bytes() -> int:
    """``MemTotal - MemFree``: gVisor's count of every page its kernel holds for the sandbox."""
    total = free = 0
    for line in _read("/proc/meminfo").splitlines()[:4]:
        if line.startswith(b"MemTotal:"):
            total = int(line.split()[1]) * 1024
        elif line.startswith(b"MemFree:"):
            free = int(line.split()[1]) * 1024
    return max(0, total - free)


def read_limit(path: str) -> int:
    try:
        return max(0, int(_read(path).strip() or b"0"))
    except (OSError, ValueError):
        return 0


def largest() -> "tuple[int, int]":
    """The pid and resident bytes of the largest process but PID 1 (the guest) ((0, 0): none)."""
    best, best_rss = 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        try:
            rss = int(_read(f"/proc/{name}/statm").split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if rss > best_rss:
            best, best_rss = int(name), rss
    return best, best_rss


def check(limit: int) -> float:
    """One pass: kill when over ``limit``; the seconds until the next pass."""
    used = used_bytes()
    if used <= limit:
        return min(MAX_INTERVAL, max(MIN_INTERVAL, (limit - used) / MAX_RATE))
    pid, rss = largest()
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            log(f"out of memory: killed pid {pid} ({rss >> 20} MiB resident, {used >> 20} MiB in use)")
        except OSError:
            pass
    return AFTER_KILL


def _run(limit_file: str) -> None:
    limit, reread = 0, 0.0
    while True:
        now = time.monotonic()
        if now >= reread:
            limit, reread = read_limit(limit_file), now + LIMIT_REREAD
        try:
            pause = check(limit) if limit else LIMIT_REREAD
        except Exception as e:  # never let the thread die: the limit would go unenforced
            log(f"memory watch: {e!r}")
            pause = MAX_INTERVAL
        time.sleep(pause)


def start(limit_file: str) -> None:
    """Watch in a thread of the guest (a thread blocked in sleep does not stop a checkpoint)."""
    _thread.start_new_thread(_run, (limit_file,))
