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

So since session 16 the host wakes the watch (agent/runtime/gvisor_memwake.py): our stdin is a
pipe on which the agent writes a record (its cgroup's usage, limit, thresholds' step) whenever
the cgroup's usage crosses a threshold, and every second. While records come and the limit is
further than a step plus what MAX_RATE allocates in :data:`WAKE_LATENCY`, a growth that could
reach it is reported in time, and the watch sleeps a second (:func:`covered`); else it polls as
above. The records also show memory the guest cannot read (the Sentry's own heap: socket and
pipe buffers): near the cgroup's limit they kill too (:func:`host_check`).

The limit is a file the agent writes before each start (``--memory-limit-file``; bytes, in
decimal), re-read every second: a sandbox restored from another's memory image (a fork) keeps
this thread but gets its own limit. Root-owned and read-only to the sandbox.
"""

import _thread
import os
import select
import signal
import stat
import struct
import time

from . import shm_orphans
from .kernfs import read_small
from .protocol import log
from .users import starting

# bytes/s: above the fastest allocation of one vCPU under gVisor's ptrace platform, as the host
# cgroup is charged (measured on the 2-core reference machine, quiet: a Python loop of 8 MiB
# bytearrays 1.6 GiB/s, one bytearray 1.6, writes to a gVisor tmpfs 1.5, an mmap touched page
# by page 2.4, an mmap with MAP_POPULATE 2.8; bench/gvisor_memwatch.py). Several vCPUs allocating
# at once go faster: past this rate the host may end the sandbox (docs/security.md §1b).
MAX_RATE = 4 << 30
MIN_INTERVAL = 0.005
MAX_INTERVAL = 0.25
LIMIT_REREAD = 1.0
# The host's wake (agent/runtime/gvisor_memwake.py): records (the host cgroup's usage, its limit,
# the spacing of its thresholds) on stdin at each threshold crossed and every second.
RECORD = struct.Struct("<QQQ")
# The longest a wake may take to be seen here (MAX_RATE allocates 200 MiB meanwhile): at 25 ms,
# a hog right after an agent restart (its thread slow to run) once ended a 128 MiB sandbox.
WAKE_LATENCY = 0.05
TRUST = 2.5  # seconds a record vouches for the wake (beats come every second)
PIPE_MAX = 1 << 16  # a pipe's default size: all a backlog can hold
# A record of the host cgroup this close to its limit kills too: memory only the host sees (the
# Sentry's own heap: socket and pipe buffers) would else take it there, and end the sandbox.
# The victim's buffers stay in the Sentry's heap (Go garbage) for up to 2 minutes: at 24 MiB a
# hoarder killed late on a loaded host (at 216-219 of 224 MiB) left too little room for a shell,
# and the host ended the sandbox (session 19); at 40 the kill comes at 184-203, 20+ MiB left.
HOST_MARGIN = 40 << 20
SWEPT_WAIT = 2.0  # at most this long for removed SysV segments' memory to be counted free
VICTIM_WAIT = 10.0  # at most this long for a victim's memory to be counted free
GROWTH = 32 << 20  # meanwhile, usage this far above its lowest: another process is allocating
SHELL_ROOM = 16 << 20  # what a command's start may add to the Sentry's heap, with room to spare


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
        return max(0, int(read_small(path).strip() or b"0"))
    except (OSError, ValueError):
        return 0


def largest() -> "tuple[int, int]":
    """The pid and resident bytes of the largest process but PID 1 (the guest) and the guest's
    children not yet exec'd (users.starting: the guest's pages) ((0, 0): none)."""
    best, best_rss = 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1" or int(name) in starting:
            continue
        try:
            rss = int(read_small(f"/proc/{name}/statm").split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if rss > best_rss:
            best, best_rss = int(name), rss
    return best, best_rss


def kill_largest(why: str) -> int:
    """SIGKILL the largest process but PID 1, logged with ``why``: its pid; 0 if there is none,
    -1 if it was gone before the signal."""
    pid, rss = largest()
    if not pid:
        return 0
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return -1
    log(f"out of memory: killed pid {pid} ({rss >> 20} MiB resident, {why})")
    return pid


def gone(pid: int) -> bool:
    try:
        stat = read_small(f"/proc/{pid}/stat")
    except OSError:
        return True
    return stat.rpartition(b")")[2].split()[:1] in ([b"Z"], [b"X"])


def in_use() -> int:
    """The memory the limit is held against: gVisor's, and the disk's."""
    return used_bytes() + disk_bytes()


def check(limit: int, covered: int = 0) -> float:
    """One pass: kill when over ``limit``; the seconds until the next pass. ``covered``: growth
    the host's wake is sure to report in time (0: no wake), so a pass further than that from the
    limit may wait for it (:data:`LIMIT_REREAD` at most). After a kill, no other process is
    chosen until the victim's memory is counted free (as Linux's OOM killer waits for an
    exiting victim): else a second, innocent one would go."""
    used = in_use()
    if used <= limit:
        if covered and limit - used > covered:
            return LIMIT_REREAD
        return min(MAX_INTERVAL, max(MIN_INTERVAL, (limit - used) / MAX_RATE))
    if shm_orphans.sweeper.sweep():
        _wait_swept(limit)  # segments nothing held are gone (shm_orphans.py): look again first
        return MIN_INTERVAL
    pid = kill_largest(f"{used >> 20} MiB in use")
    if not pid:
        return MAX_INTERVAL
    if pid > 0:
        _wait_freed(pid, limit)
    return MIN_INTERVAL


def _wait_swept(limit: int) -> None:
    """Until the removed segments' memory is counted free (gVisor counts it some tens of ms
    later, as a victim's), :data:`SWEPT_WAIT` at most: then a process is killed as before."""
    deadline = time.monotonic() + SWEPT_WAIT
    while in_use() > limit and time.monotonic() < deadline:
        time.sleep(MIN_INTERVAL)


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
        if gone(pid):
            low = min(low, used) if low else used
            if used > low + GROWTH:
                return
        time.sleep(MIN_INTERVAL)


def wake_fd() -> int:
    """Our stdin when it is the host's wake pipe (a FIFO), else -1 (the watch only polls)."""
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return -1
        os.set_blocking(0, False)
    except OSError:
        return -1
    return 0


def covered(record: "tuple[int, int, int] | None") -> int:
    """The growth the host's wake reports in time: a threshold's step, plus what MAX_RATE
    allocates while the wake travels (0: none, or the host cgroup itself near its limit)."""
    if record is None:
        return 0
    usage, host_limit, step = record
    reach = step + int(MAX_RATE * WAKE_LATENCY)
    return reach if host_limit - usage > reach else 0


def wait(fd: int, pause: float) -> "tuple[int, int, int] | None":
    """Up to ``pause`` s for a record on ``fd`` (-1: just sleep); the newest one read, if any.
    A poll, not a sleep: the same one syscall, and the host can end it."""
    if fd < 0:
        time.sleep(pause)
        return None
    p = select.poll()
    p.register(fd, select.POLLIN)
    if not p.poll(pause * 1000):
        return None
    # Everything waiting, not one read: after a pause (runsc pause) a backlog of beats waits,
    # and an old record's usage must not be taken for the present one (host_check kills on it).
    data = b""
    while len(data) < PIPE_MAX:
        try:
            chunk = os.read(fd, PIPE_MAX)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    if len(data) < RECORD.size:
        return None
    record = RECORD.unpack_from(data, len(data) // RECORD.size * RECORD.size - RECORD.size)
    usage, host_limit, step = record
    return record if 0 < step < host_limit and usage < 1 << 50 else None


_host_low = 0  # after a kill for the host's count: its lowest since (0: none pending)
_host_prev = 0  # the usage of the record before


def host_next(low: int, host_limit: int) -> int:
    """After a kill for the host's count, the usage that chooses another: half the way from
    the lowest seen since to the limit (the other half is the next hog's, to be caught in), and
    at least a shell's size past it. A victim killed late leaves its garbage near the limit,
    where killing every command started (5-9 MiB each here) frees nothing and leaves the tenant
    no sandbox to use; a second hog in that little room may take the cgroup to its limit, and
    the host ends that sandbox (its own only: the limit holds)."""
    return low + max(SHELL_ROOM, (host_limit - low) // 2)


def host_check(record: "tuple[int, int, int]", limit: int) -> None:
    """Kill the largest process when the host cgroup nears its limit while rising, once per
    growth. The Sentry keeps a victim's freed heap (its Go garbage) for minutes, often just
    under the margin: so after a kill the episode lasts until the usage is a :data:`GROWTH`
    below the margin, and meanwhile only :func:`host_next` chooses another (a shell started
    then, a few MiB, was killed as a new hog every time: CI, session 19). Not while our own
    count is over ``limit`` (check() is killing), nor on a record of a fall or a beat: memory
    of a victim the host has not got back yet is no new hog."""
    global _host_low, _host_prev
    usage, host_limit, _ = record
    rising, _host_prev = usage > _host_prev, usage
    if _host_low and usage <= host_limit - HOST_MARGIN - GROWTH:
        _host_low = 0  # the Sentry gave the memory back: a new episode
    if _host_low:
        _host_low = min(_host_low, usage)
        if usage <= host_next(_host_low, host_limit):
            return
    elif usage <= host_limit - HOST_MARGIN:
        return
    if not rising or in_use() > limit:
        return
    if kill_largest(f"host cgroup at {usage >> 20} MiB") > 0:
        _host_low = usage


def _run(limit_file: str) -> None:
    limit, reread = 0, 0.0
    fd, record, trusted_until = wake_fd(), None, 0.0
    while True:
        now = time.monotonic()
        if now >= reread:
            limit, reread = read_limit(limit_file), now + LIMIT_REREAD
        if now >= trusted_until:
            record = None  # no beat lately: the agent restarted, say; poll until one comes
        try:
            pause = check(limit, covered(record)) if limit else LIMIT_REREAD
        except Exception as e:  # never let the thread die: the limit would go unenforced
            log(f"memory watch: {e!r}")
            pause = MAX_INTERVAL
        try:
            got = wait(fd, pause)
        except Exception as e:  # the pipe broke (a restored image's stale stdin?): poll alone
            log(f"memory watch: wake pipe: {e!r}")
            fd, got = -1, None
        if got is not None:
            record, trusted_until = got, time.monotonic() + TRUST
            try:
                host_check(got, limit)
            except Exception as e:
                log(f"memory watch: {e!r}")


def start(limit_file: str) -> None:
    """Watch in a thread of the guest (a thread blocked in sleep does not stop a checkpoint),
    and sweep SysV segments nothing holds in another (shm_orphans.py)."""
    _thread.start_new_thread(_run, (limit_file,))
    shm_orphans.start()
