"""Wakes the gVisor memory watch (guest_agent/memwatch.py) from the host, so an idle sandbox's
guest need not poll 17 times a second.

The watch polls at the time an allocation at ``MAX_RATE`` (4 GiB/s) would need to reach the
limit: ~57 ms in an idle 256 MiB sandbox, ~1 ms of host CPU per poll under ptrace (most of it the
sleep's own wake-up; bench/gvisor_memwatch.py). The host sees every byte the sandbox holds in
its cgroup, so here the kernel tells instead: cgroup v1 memory thresholds (``cgroup.event_control``)
every :func:`step` bytes of the cgroup's usage signal an eventfd whenever the usage crosses one,
either way; a thread of the agent turns each signal, and a beat every :data:`BEAT` seconds, into
a :data:`RECORD` (the cgroup's usage, its limit, the step) written to a pipe that is the guest's
stdin. The guest trusts a quiet pipe only while beats arrive and while the limit is further away
than one step plus what ``MAX_RATE`` allocates in the wake's latency; else it polls as before.
Any failure here (the agent restarted, a slow thread) only costs the guest its long sleep.

The pipe is the sandbox's stdin opened read-write, so the guest never reads an end of file
while the agent is away; a restarted agent re-arms the sandboxes it adopts from the sandbox
process's descriptors (GvisorRuntime._rearm), and meanwhile their guests poll as before.

The same thread drains the guest's stderr (its log lines: the watch's kills), an unnamed file
on the sandbox's 64 KiB run tmpfs that nothing read: ~600 kill lines filled it. At each beat the
new bytes go to the agent's log (``event=guest_stderr``, at most :data:`LOG_LINES` lines and
:data:`LOG_BYTES` bytes a beat; the rest is counted as dropped) and their pages are punched out
of the file, so it holds at most what the guest writes in a second. Sandbox root can write to
that file too (``/proc/1/fd/2``): per beat alone, it kept ~17 KB a second of one sandbox in the
agent's log for good (session 17), so the lines also come from a bucket (:data:`LOG_BURST`,
refilled :data:`LOG_RATE` a second), each at most :data:`LINE_CHARS` characters, and the count
of dropped bytes is logged at most every :data:`DROP_REPORT` seconds.

At the cgroup's limit the host holds its OOM killer back (``oom_kill_disable``, session 31):
what faults there waits instead of the kernel killing the largest process of the cgroup, which
is the Sentry, that is the whole sandbox. Before, a guest whose watch was starved of CPU (a
loaded host) or an allocation faster than its poll (one ``mmap(MAP_POPULATE)``) lost the
whole sandbox; now the guest gets its turn to kill the tenant's process inside. The wait is
bounded: a thread of the Sentry may itself fault at the limit and stop gVisor's kernel (its
garbage collector waits for that thread), so a cgroup still at its limit :data:`WALL_WAIT`
seconds after the kernel's OOM event is handed back to the kernel's killer, as before this hold,
and held again once below. Unless the guest is seen to run meanwhile (:func:`guest_ran`: it
read the record written when the wait began, or wrote to its stderr, its kill lines): a guest
that runs is no stopped kernel, only one starved of CPU on a loaded host, and it is waited for
:data:`WALL_WAIT` more at a time, :data:`WALL_WAIT_MAX` in all (session 33: CI lost a sandbox
to a hog at the wall right after an agent restart, the guest's kill late). A charge made by
a system call (a ``clone``) is refused at once instead (``ENOMEM``), never waits. The host's
memory bound is unchanged: the cgroup's limit. The hold lasts only while this thread watches:
:meth:`MemoryWake.disarm` hands it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from warren.agent.runtime.cmds_oom import read_control
from warren.agent.runtime.oci import cgroup_dir

log = logging.getLogger("warren.agent")

RECORD = struct.Struct("<QQQ")  # usage, limit, step (bytes): 24 bytes, one atomic pipe write
BEAT = 1.0  # seconds between records when nothing moves (the guest's proof that wakes work)
MIN_STEP = 4 << 20
MAX_RUNGS = 128
LOG_LINES = 16  # of the guest's stderr to the agent's log, per sandbox and beat
LOG_BYTES = 4096
# Beyond a beat: a bucket of lines per sandbox. The guest's kill lines come ~1 a second at most
# (each waits for its victim's memory); what else reaches the file is sandbox root's own.
LOG_BURST = 64
LOG_RATE = 1.0  # lines a second
LINE_CHARS = 256  # of a line as logged (escaped: a control byte is 4 characters)
DROP_REPORT = 60.0  # seconds between two counts of dropped bytes
# Seconds a cgroup may wait at its limit for the guest's kill before the kernel's OOM killer
# acts (the guest polls every 5-250 ms; under load its turn comes late).
WALL_WAIT = 2.0
# The whole wait, while the guest runs (it reads its records or logs): its kill waits for the
# victim's memory to be counted free, seconds on a loaded host.
WALL_WAIT_MAX = 10.0
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def step(limit: int) -> int:
    """The thresholds' spacing for a cgroup limit: at most :data:`MAX_RUNGS` of them."""
    return max(MIN_STEP, (-(-limit // MAX_RUNGS) + 4095) & ~4095)


def wake_pipe() -> tuple[int, int]:
    """``(stdin, writer)``: the guest's stdin, the pipe opened read-write (never an EOF), and
    the agent's non-blocking write end (a full pipe drops a record, never blocks the thread)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        rw = os.open(f"/proc/self/fd/{r}", os.O_RDWR | os.O_CLOEXEC)
    finally:
        os.close(r)
    os.set_blocking(w, False)
    return rw, w


@dataclass
class _Armed:
    sandbox_id: str
    writer: int
    event: int  # the eventfd the thresholds signal
    usage: int  # memory.usage_in_bytes, open: its read is the usage; thresholds are on it
    limit: int
    step: int
    stderr: int  # the guest's stderr file (-1: none)
    oom: int = -1  # the eventfd of the cgroup's OOM events (its tasks wait at the limit)
    wall_since: float | None = None  # when its tasks started to wait at the limit
    wall_check: float = 0.0  # when that wait is looked at next (WALL_WAIT after its last look)
    written: int = 0  # bytes of records written to the pipe (the guest's reads are the rest)
    mark: tuple[int, int] = (0, 0)  # (written, its stderr's size) at the wait's last look (_mark)
    released: bool = False  # the kernel's OOM killer is back on (a wait that lasted)
    consumed: int = 0  # its bytes already logged
    tokens: float = LOG_BURST  # lines the bucket still allows
    filled_at: float = field(default_factory=time.monotonic)
    dropped: int = 0  # bytes not logged since the last count of them
    reported_at: float = -DROP_REPORT


class MemoryWake:
    """The thread and its sandboxes; :meth:`arm` after a start, :meth:`disarm` at its end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, _Armed] = {}
        self._by_event: dict[int, _Armed] = {}
        self._epoll: select.epoll | None = None

    def arm(self, sandbox_id: str, writer: int, stderr: int = -1) -> bool:
        """Thresholds on the sandbox's cgroup and records to ``writer``; ``stderr`` drained. Both
        descriptors are owned from here on. False: not armed (logged), and nothing held."""
        self.disarm(sandbox_id)
        cg = cgroup_dir("memory", sandbox_id)
        event = usage = oom = -1
        try:
            limit = int((cg / "memory.limit_in_bytes").read_text())
            event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            oom = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            usage = os.open(cg / "memory.usage_in_bytes", os.O_RDONLY | os.O_CLOEXEC)
            spacing = step(limit)
            _register(cg, event, usage, spacing, limit, oom)
            # Last: held only once this thread is sure to hear of the wait, to end it.
            _hold(cg, True)
        except (OSError, ValueError) as e:  # the guest polls as before
            log.warning("event=memwake_unarmed sandbox_id=%s error=%s", sandbox_id, e)
            for fd in (event, usage, oom, writer, stderr):
                if fd >= 0:
                    os.close(fd)
            self.release(sandbox_id)  # a hold an earlier agent left: nothing here would end it
            return False
        armed = _Armed(sandbox_id, writer, event, usage, limit, spacing, stderr, oom)
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, name="gvisor-memwake", daemon=True).start()
            self._armed[sandbox_id] = armed
            self._by_event[event] = armed
            self._by_event[oom] = armed
            self._epoll.register(event, select.EPOLLIN)
            self._epoll.register(oom, select.EPOLLIN)
            self._at_wall(armed)  # re-armed (an agent restart) while it waits there
        self._send(armed)
        return True

    def disarm(self, sandbox_id: str) -> None:
        """The sandbox no longer watched, so its cgroup no longer holds: the kernel's OOM killer is
        handed back first. A checkpoint or delete disarms before it runs, and either one meeting
        the limit with the hold on waited for good (its Sentry stopped, runsc at its 60 s timeout,
        the sandbox left stuck; session 31's attack): now the kernel ends the Sentry instead."""
        with self._lock:
            armed = self._armed.pop(sandbox_id, None)
            if armed is None:
                return
            with contextlib.suppress(OSError):  # the cgroup is gone: nothing waits
                _hold(cgroup_dir("memory", sandbox_id), False)
            for fd in (armed.event, armed.oom):
                self._by_event.pop(fd, None)
                if self._epoll is not None:
                    with contextlib.suppress(OSError):
                        self._epoll.unregister(fd)
            # Closing the eventfds ends their registrations (the kernel drops them with them).
            drain(armed, final=True)
            for fd in (armed.event, armed.usage, armed.oom, armed.writer, armed.stderr):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    @staticmethod
    def release(sandbox_id: str) -> None:
        """The kernel's OOM killer back for a sandbox this thread does not watch: one an earlier
        agent held whose re-arm failed here (its watch is gone with that agent), so that nothing
        at the limit waits for good, as a hold with no watch would."""
        with contextlib.suppress(OSError):  # no cgroup: nothing held
            _hold(cgroup_dir("memory", sandbox_id), False)

    def armed(self) -> list[str]:
        with self._lock:
            return list(self._armed)

    def _send(self, armed: _Armed) -> None:
        """One record; called with or without the lock, the fds are only closed under it."""
        try:
            used = int(os.pread(armed.usage, 32, 0))
            armed.written += os.write(armed.writer, RECORD.pack(used, armed.limit, armed.step))
        except (OSError, ValueError):
            pass  # full pipe (the guest is behind: it wakes anyway), or the cgroup is gone

    def _at_wall(self, armed: _Armed) -> None:
        """An OOM event (or a look at one): tasks waiting at the limit start the clock."""
        try:
            waiting = read_control(cgroup_dir("memory", armed.sandbox_id) / "memory.oom_control")["under_oom"]
        except (OSError, ValueError, KeyError):
            return  # the cgroup is going
        if waiting and armed.wall_since is None:
            armed.wall_since = time.monotonic()
            self._send(armed)  # the guest's read of it is its proof that it runs
            armed.wall_check, armed.mark = armed.wall_since + WALL_WAIT, _mark(armed)
            log.info("event=gvisor_memory_wall sandbox_id=%s", armed.sandbox_id)

    def _wall_deadline(self) -> float:
        waits = [a.wall_check for a in self._armed.values() if a.wall_since is not None]
        return min(waits, default=float("inf"))

    def _look_at_wall(self, armed: _Armed, now: float) -> None:
        """The wait's look, every :data:`WALL_WAIT`: over once nothing waits; waited on while
        the guest runs (up to :data:`WALL_WAIT_MAX`); else handed to the kernel's killer."""
        assert armed.wall_since is not None
        ran = guest_ran(armed.mark, _progress(armed))
        if ran and now - armed.wall_since < WALL_WAIT_MAX and _waiting(armed):
            self._send(armed)
            armed.wall_check, armed.mark = now + WALL_WAIT, _mark(armed)
            log.info("event=gvisor_memory_wall_waited sandbox_id=%s waited_s=%.1f",
                     armed.sandbox_id, now - armed.wall_since)  # fmt: skip
            return
        _end_wait(armed, now - armed.wall_since)

    def _run(self) -> None:
        assert self._epoll is not None
        next_beat = time.monotonic() + BEAT
        while True:
            with self._lock:
                wake_at = min(next_beat, self._wall_deadline())
            try:
                events = self._epoll.poll(max(0.0, wake_at - time.monotonic()))
            except InterruptedError:
                continue
            with self._lock:
                for fd, _ in events:
                    armed = self._by_event.get(fd)
                    if armed is None:
                        continue
                    with contextlib.suppress(OSError):
                        os.eventfd_read(fd)
                    if fd == armed.oom:
                        self._at_wall(armed)
                    self._send(armed)
                now = time.monotonic()
                for armed in self._armed.values():
                    if armed.wall_since is not None and now >= armed.wall_check:
                        self._look_at_wall(armed, now)
                if now >= next_beat:
                    for armed in self._armed.values():
                        self._send(armed)
                        drain(armed)
                        if armed.released:
                            _rehold(armed)
                    next_beat = time.monotonic() + BEAT


def _register(cg: Path, event: int, usage: int, spacing: int, limit: int, oom: int) -> None:
    """The usage thresholds on ``event`` and the cgroup's OOM events on ``oom``."""
    control = os.open(cg / "cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
    try:
        for rung in range(spacing, limit + spacing, spacing):
            os.write(control, f"{event} {usage} {rung}".encode())
        oom_control = os.open(cg / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:  # the registration keeps what it needs of the file
            os.write(control, f"{oom} {oom_control}".encode())
        finally:
            os.close(oom_control)
    finally:
        os.close(control)


def _hold(cg: Path, on: bool) -> None:
    """The cgroup's OOM killer held back (``on``) or handed back (which wakes what waits)."""
    (cg / "memory.oom_control").write_text("1" if on else "0")


def _waiting(armed: _Armed) -> bool:
    """Tasks of the sandbox wait at its limit (False: the cgroup is gone)."""
    try:
        return bool(read_control(cgroup_dir("memory", armed.sandbox_id) / "memory.oom_control")["under_oom"])
    except (OSError, ValueError, KeyError):
        return False


def _progress(armed: _Armed) -> tuple[int, int]:
    """(bytes of records the guest has read, its stderr's size): what grows while it runs. The
    pipe's unread bytes are those of this agent's records, or of an agent before it (then the
    first count is low: no wait is lengthened until the guest reads them)."""
    try:
        queued = struct.unpack("i", fcntl.ioctl(armed.writer, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        queued = armed.written
    logged = 0
    if armed.stderr >= 0:
        with contextlib.suppress(OSError):
            logged = os.fstat(armed.stderr).st_size  # kept by the punches (FALLOC_FL_KEEP_SIZE)
    return armed.written - queued, logged


def _mark(armed: _Armed) -> tuple[int, int]:
    """(bytes of records written, the guest's stderr's size): a look's mark, to which the next
    look's :func:`_progress` is compared."""
    return armed.written, _progress(armed)[1]


def guest_ran(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Whether the guest ran since a look's :func:`_mark` (``before``), from the
    :func:`_progress` now (``after``): it read every record written by then, or wrote to its
    stderr since. A stopped gVisor kernel does neither."""
    written_before, logged_before = before
    read_now, logged_now = after
    return read_now >= written_before > 0 or logged_now > logged_before


def _end_wait(armed: _Armed, waited: float) -> None:
    """After the wait at the limit (:data:`WALL_WAIT`, or longer while the guest ran): if tasks
    still wait, the kernel's OOM killer acts, as before the hold (the guest did not free
    enough in time)."""
    armed.wall_since = None
    cg = cgroup_dir("memory", armed.sandbox_id)
    try:
        if not read_control(cg / "memory.oom_control")["under_oom"]:
            return
        _hold(cg, False)
    except (OSError, ValueError, KeyError):
        return
    armed.released = True
    log.warning("event=gvisor_memory_wall_released sandbox_id=%s waited_s=%.1f", armed.sandbox_id, waited)


def _rehold(armed: _Armed) -> None:
    """At a beat after a release: the hold again, once nothing waits at the limit."""
    cg = cgroup_dir("memory", armed.sandbox_id)
    try:
        if read_control(cg / "memory.oom_control")["under_oom"]:
            return
        _hold(cg, True)
    except (OSError, ValueError, KeyError):
        return
    armed.released = False


def drain(armed: _Armed, *, final: bool = False) -> None:
    """The guest's new stderr bytes to the agent's log, bounded, and out of its file."""
    if armed.stderr < 0:
        return
    try:
        size = os.fstat(armed.stderr).st_size
        if size < armed.consumed:  # truncated meanwhile: read again from the start
            armed.consumed = 0
        data = b""
        if size > armed.consumed:
            data = os.pread(armed.stderr, min(LOG_BYTES, size - armed.consumed), armed.consumed)
    except OSError:
        return
    if size > armed.consumed:
        _log_lines(armed, data, size - armed.consumed)
        armed.consumed = size
        # Punch, not truncate: the guest writes on at its own offset, and a hole takes no memory.
        if _libc.fallocate(armed.stderr, _PUNCH, ctypes.c_long(0), ctypes.c_long(size)) != 0:
            log.debug("event=guest_stderr_punch_failed errno=%d", ctypes.get_errno())
    now = time.monotonic()
    if armed.dropped and (final or now - armed.reported_at >= DROP_REPORT):
        log.warning("event=guest_stderr_dropped sandbox_id=%s bytes=%d", armed.sandbox_id, armed.dropped)
        armed.dropped, armed.reported_at = 0, now


def _log_lines(armed: _Armed, data: bytes, new: int) -> None:
    """Up to :data:`LOG_LINES` of ``data`` (the first of ``new`` bytes) as the bucket allows;
    the rest counted in ``armed.dropped``."""
    now = time.monotonic()
    armed.tokens = min(LOG_BURST, armed.tokens + (now - armed.filled_at) * LOG_RATE)
    armed.filled_at = now
    lines = [line for line in data.replace(b"\0", b"").splitlines() if line.strip()]
    allowed = min(LOG_LINES, int(armed.tokens), len(lines))
    armed.tokens -= allowed
    for line in lines[:allowed]:
        text = repr(line.decode(errors="replace"))
        if len(text) > LINE_CHARS:
            text = text[: LINE_CHARS - 3] + "..."
        log.info("event=guest_stderr sandbox_id=%s line=%s", armed.sandbox_id, text)
    armed.dropped += new - len(data) + sum(len(x) + 1 for x in lines[allowed:])
