"""A user-space OOM killer, for runtimes whose kernel does not enforce the memory limit (gVisor).

Under gVisor the sandbox's memory cgroup is on the host, around gVisor's own kernel (the
sentry): at its limit the host's OOM killer would end the sentry, that is the whole sandbox. So
the agent gives that cgroup a fixed headroom above the tenant's limit (runtime/gvisor.py) and
the guest, PID 1 inside, enforces the tenant's limit itself, as Linux would in a runc sandbox:
when the memory in use in the sandbox (from gVisor's ``/proc/meminfo``: every process's memory
and the tmpfs files, not the evictable page cache of disk files; plus the sandbox's disk, see
:func:`disk_bytes`) passes the limit, the process with the largest resident set (never PID 1)
gets SIGKILL, and the next one if that was not enough.

Polling, not an event: gVisor has no memory pressure notification. The interval shrinks as the
usage nears the limit (the time an allocation at :data:`MAX_RATE` would need to reach it,
between :data:`MIN_INTERVAL` and :data:`MAX_INTERVAL`), so an allocation loop is caught within a
few MiB of the limit. :data:`MAX_RATE` must be above the fastest allocation a sandbox can make:
below it, the first interval of an idle sandbox outlasts the time a hog needs to pass the limit
and the whole headroom (session 15: at 1 GiB/s, a 256 MiB sandbox's idle interval was ~230 ms,
and 1 run in 4 of a hog at the 1.6-2.4 GiB/s measured went from idle to the host cgroup's
limit between two reads). The price is paid by small sandboxes: an idle one is read 4 times a
second from 1 GiB up, ~8 at 512 MiB, ~16 at 256 MiB (~1 ms of host CPU each under ptrace,
half of it the disk's ``statvfs``, a round trip to the Gofer; bench/gvisor_memwatch.py).

The limit is a file the agent writes before each start (``--memory-limit-file``; bytes, in
decimal), re-read every second: a sandbox restored from another's memory image (a fork) keeps
this thread but gets its own limit. Root-owned and read-only to the sandbox.
"""

import _thread
import os
import signal
import time

from .protocol import log

# bytes/s: above the fastest allocation of one vCPU under gVisor's ptrace platform, as the host
# cgroup is charged (measured on the 2-core reference machine, quiet: a Python loop of 8 MiB
# bytearrays 1.6 GiB/s, one bytearray 1.6, writes to a gVisor tmpfs 1.5, an mmap touched page
# by page 2.4, an mmap with MAP_POPULATE 2.8; bench/gvisor_memwatch.py). Several vCPUs allocating
# at once go faster: past this rate the host may end the sandbox (docs/security.md §1b).
MAX_RATE = 4 << 30
MIN_INTERVAL = 0.005
MAX_INTERVAL = 0.25
LIMIT_REREAD = 1.0
VICTIM_WAIT = 10.0  # at most this long for a victim's memory to be counted free
GROWTH = 32 << 20  # meanwhile, usage this far above its lowest: another process is allocating


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


_meminfo = -1  # /proc/meminfo, kept open by the watch thread (see _read_meminfo)


def _read_meminfo() -> bytes:
    """One ``pread`` of the open file (gVisor regenerates it at offset 0): each syscall is a
    ptrace round trip (~75 µs of the sandbox's CPU here), and open + read + close tripled it.
    Reopened after an error (a restored image whose file would not read, say)."""
    global _meminfo
    if _meminfo < 0:
        _meminfo = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(_meminfo, 4096, 0)
    except OSError:
        fd, _meminfo = _meminfo, -1
        os.close(fd)
        raise


def used_bytes() -> int:
    """``MemTotal - MemFree - (Cached - Shmem)``: what gVisor's kernel holds for the sandbox's
    processes and tmpfs files, without the page cache of disk files (evictable: it is written
    back to the disk). ``Cached`` counts tmpfs too (``Shmem``), which stays."""
    fields = {}
    for line in _read_meminfo().splitlines():
        name, _, rest = line.partition(b":")
        if name in (b"MemTotal", b"MemFree", b"Cached", b"Shmem"):
            fields[name] = int(rest.split()[0]) * 1024
    cache = max(0, fields.get(b"Cached", 0) - fields.get(b"Shmem", 0))
    return max(0, fields.get(b"MemTotal", 0) - fields.get(b"MemFree", 0) - cache)


def disk_bytes() -> int:
    """What the sandbox's disk holds: Warren's disk is a host tmpfs (the root's writable layer,
    ``/dev/shm`` on it too), written by the Gofer, so it is in the host cgroup but not in
    gVisor's meminfo (its files are "disk files" there). Counted as under runc, where the disk
    shares the memory limit: else a tenant filled its disk, then allocated up to the limit on
    top, and the host cgroup's OOM killer ended the whole sandbox (found in session 9)."""
    try:
        st = os.statvfs("/")
    except OSError:
        return 0
    return max(0, (st.f_blocks - st.f_bfree) * st.f_frsize)


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


def _gone(pid: int) -> bool:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return True
    return stat.rpartition(b")")[2].split()[:1] in ([b"Z"], [b"X"])


def in_use() -> int:
    """The memory the limit is held against: gVisor's, and the disk's."""
    return used_bytes() + disk_bytes()


def check(limit: int) -> float:
    """One pass: kill when over ``limit``; the seconds until the next pass. After a kill, no
    other process is chosen until the victim's memory is counted free (as Linux's OOM killer
    waits for an exiting victim): else a second, innocent one would go."""
    used = in_use()
    if used <= limit:
        return min(MAX_INTERVAL, max(MIN_INTERVAL, (limit - used) / MAX_RATE))
    pid, rss = largest()
    if not pid:
        return MAX_INTERVAL
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return MIN_INTERVAL
    log(f"out of memory: killed pid {pid} ({rss >> 20} MiB resident, {used >> 20} MiB in use)")
    _wait_freed(pid, limit)
    return MIN_INTERVAL


def _wait_freed(pid: int, limit: int) -> None:
    """Until the victim's memory is counted free (gVisor frees it some tens of ms after the
    exit, seconds on a loaded host), unless another process is meanwhile allocating: then it is
    the next one's turn. Growth counts once the victim is gone (until its SIGKILL lands, it may
    still allocate). The wait is long: ended at 2 s, it killed the next process started in
    the sandbox, a shell, while a 256 MiB victim was still being freed (CI, session 13)."""
    deadline = time.monotonic() + VICTIM_WAIT
    low = 0
    while time.monotonic() < deadline:
        used = in_use()
        if used <= limit:
            return
        if _gone(pid):
            low = min(low, used) if low else used
            if used > low + GROWTH:
                return
        time.sleep(MIN_INTERVAL)


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
