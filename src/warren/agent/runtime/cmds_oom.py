"""OOM storms: the agent takes over a runc/crun sandbox's OOM kills when they come in a storm (v1).

At its memory limit the kernel's OOM killer ends one of the sandbox's commands (``cmds``,
cmds_cgroup.py) and writes about it to the host's kernel log: a "Killed process" line at error
level (which also reaches the host's console), an ``oom-kill:`` line, the reaper's line, and a
memory report rate-limited for the whole host. A tenant that starts allocators in a loop makes
that a storm: one 128 MiB sandbox made 144 kills in 9.3 s, 1705 kernel lines (80 KB), and spent
the host-wide report budget that other tenants' OOM reports need (session 19, docs/security.md).

So the agent watches every sandbox's ``cmds`` for OOM events (an eventfd on its
``memory.oom_control``, which the kernel signals at each OOM, whoever kills). An ordinary
sandbox keeps the kernel's killer and its semantics. After :data:`STORM_KILLS` kernel kills
within :data:`STORM_WINDOW_S` the sandbox is in a storm: the agent sets ``oom_kill_disable`` on
``cmds`` and kills itself, one process per OOM event, the largest resident set first (the
kernel's choice: every command runs at the same ``oom_score_adj``), by pidfd, its memory taken
back at once with ``process_mrelease``. A process that faults at the limit then waits for that
kill instead of the kernel's; no line reaches the kernel log, and the agent's own lines go
through a per-sandbox bucket (cmds_procs.LogBucket). After :data:`QUIET_S` without an OOM the
kernel's killer is back (``event=oom_storm_end``).

During a storm a charge the kernel makes inside a system call (a fork's kernel stack, a pipe
buffer, a tmpfs write) fails with ENOMEM where the kernel would have killed: the storming sandbox
alone sees that. A command's start refused so has the guest kill the largest process and try
again (guest_agent/room.py), as the kernel would. The guest is in the sandbox's own cgroup,
never in ``cmds``, and that cgroup keeps the kernel's killer throughout.

The agent arms a sandbox when it makes its ``cmds`` (runtime/oci.py) and when it re-adopts one
(manager.py). A stop gives the kernel its killer back; after a crash a sandbox left with
``oom_kill_disable`` is re-armed in a storm, and what waited meanwhile is killed then. One thread
serves every sandbox; each event costs one read of ``memory.oom_control`` and, in a storm, a kill
one read of ``statm`` per process, made without the lock that arming and disarming take.

Those reads are the tenant's to multiply (session 26): a storm beside 600 sleeping processes
bought ~11 ms of the agent's thread a kill, as many kills as its loop made (65 in 10 s), and 1000
processes (the pids limit is 1024) ~12 ms of ranking alone. So each sandbox's rankings read at
most :data:`RANK_READS_S` processes a second (:class:`RankBudget`, a second's worth at once); a
kill past it waits for the next event or sweep, slowing that sandbox's storm alone. A storm of a
few processes (an allocator loop: session 20's 14 kills a second) is never held back; one beside
a thousand processes gets ~2 kills a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warren.agent.runtime import cmds_procs
from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.agent.runtime.cmds_cgroup import NAME as CMDS

log = logging.getLogger("warren.agent")

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
STORM_KILLS = 3  # kernel kills within STORM_WINDOW_S that make a storm
STORM_WINDOW_S = 10.0
QUIET_S = 60.0  # seconds without an OOM event that end a storm
SWEEP_S = 0.25  # how often sandboxes in a storm are looked at without an event
VICTIM_WAIT_S = 1.0  # a killed process not gone yet holds the next kill back this long
RANK_READS_S = 2048  # statm reads a second per storming sandbox (~20 ms of CPU): then kills wait
SYS_PROCESS_MRELEASE = 448  # the same number on x86_64 and aarch64
_libc = ctypes.CDLL(None, use_errno=True)


def process_mrelease(pidfd: int) -> None:
    """Free a killed process's memory now, not when its exit gets there (best effort)."""
    _libc.syscall(SYS_PROCESS_MRELEASE, pidfd, 0)


def read_control(path: Path) -> dict[str, int]:
    """``memory.oom_control``: ``oom_kill_disable``, ``under_oom``, ``oom_kill``."""
    with open(path, "rb") as f:
        return {k.decode(): int(v) for k, v in (line.split() for line in f.read(256).splitlines())}


def resident(pid: int) -> int:
    """Pages resident for ``pid`` (``/proc/<pid>/statm``; the kernel's rss), 0 if it is gone.
    Three system calls, no file object (a third less CPU a ranking)."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return int(os.read(fd, 128).split(None, 2)[1])
    except (OSError, ValueError, IndexError):
        return 0
    finally:
        os.close(fd)


@dataclass
class RankBudget:
    """A sandbox's ``statm`` reads (one a process of ``cmds``, each ranking): :data:`RANK_READS_S`
    a second, as much again at once. A ranking is allowed while the reads it took last time are
    left, and spends what it takes (past zero: the next waits for them), so the reads stay
    within the rate plus one burst, whatever the storm's kills and processes (session 26)."""

    left: float = RANK_READS_S
    at: float = 0.0
    last: int = 0  # processes the last ranking read

    def allows(self, now: float) -> bool:
        self.left = min(float(RANK_READS_S), self.left + (now - self.at) * RANK_READS_S)
        self.at = now
        return self.left >= min(self.last, RANK_READS_S)

    def spend(self, reads: int) -> None:
        self.left -= reads
        self.last = reads


@dataclass
class _Armed:
    sid: str
    dir: Path  # cmds of the memory hierarchy
    efd: int
    storm: bool = False
    seen: int = 0  # the kernel's oom_kill count last read
    kills: deque[float] = field(default_factory=deque)  # when the kernel's recent kills were seen
    last_oom: float = 0.0
    victim: int = -1  # pidfd of the process killed last, until it is gone
    killed_at: float = 0.0
    log: cmds_procs.LogBucket = field(default_factory=cmds_procs.LogBucket)
    budget: RankBudget = field(default_factory=RankBudget)
    paced: cmds_procs.LogBucket = field(default_factory=cmds_procs.LogBucket)  # its own lines


class OomWatch:
    """The storms of one agent's sandboxes; :meth:`start` runs the thread."""

    def __init__(self, memory_root: Path = MEMORY_ROOT, parent: str = CGROUP_PARENT) -> None:
        self._base = memory_root / parent
        self._parent = parent
        self._lock = threading.RLock()  # a handler may disarm (its cgroup went)
        self._armed: dict[str, _Armed] = {}
        self._by_fd: dict[int, _Armed] = {}
        self._ep = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ep.register(self._wake, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._killed: Callable[[int], None] = lambda n: None

    # -- arming (the event loop's thread) -----------------------------------------------------

    def arm(self, sid: str) -> None:
        """Watch ``sid``'s ``cmds`` (none: nothing to watch; armed already: nothing to do)."""
        d = self._base / sid / CMDS
        with self._lock:
            if sid in self._armed or not d.is_dir():
                return
            try:
                a = self._register(sid, d)
            except OSError as e:  # the sandbox is going, or v1 events are not there
                log.warning("event=oom_watch_unavailable sandbox=%s error=%s", sid, e)
                return
            self._armed[sid] = self._by_fd[a.efd] = a  # in a storm: the next sweep kills

    def _register(self, sid: str, d: Path) -> _Armed:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            cfd = os.open(d / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                with open(d / "cgroup.event_control", "w") as f:
                    f.write(f"{efd} {cfd}")
            finally:
                os.close(cfd)
            state = read_control(d / "memory.oom_control")
            a = _Armed(sid, d, efd, seen=state.get("oom_kill", 0))
            if state["oom_kill_disable"]:  # a storm an agent before this one was handling
                a.storm, a.last_oom = True, time.monotonic()
            self._ep.register(efd, select.EPOLLIN)
            return a
        except BaseException:
            os.close(efd)
            raise

    def disarm(self, sid: str, *, restore: bool = False) -> None:
        """Stop watching ``sid`` (its destroy, before ``cmds`` goes); ``restore`` gives the
        kernel its killer back (an agent that stops and leaves the sandbox running)."""
        with self._lock:
            a = self._armed.pop(sid, None)
            if a is None:
                return
            self._by_fd.pop(a.efd, None)
            with contextlib.suppress(OSError):
                self._ep.unregister(a.efd)
            os.close(a.efd)
            self._forget_victim(a)
            if restore and a.storm:
                _set_disable(a.dir, 0)

    def armed(self) -> list[str]:
        return list(self._armed)

    def in_storm(self, sid: str) -> bool:
        a = self._armed.get(sid)
        return a is not None and a.storm

    # -- the thread -----------------------------------------------------------------------------

    def start(self, killed: Callable[[int], None] | None = None) -> None:
        """Run the watch in a daemon thread; ``killed(n)`` counts its kills (a metric)."""
        if killed is not None:
            self._killed = killed
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="oom-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread and give every storming sandbox the kernel's killer back."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for sid in self.armed():
            self.disarm(sid, restore=True)

    def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_S
        while not self._stopping:
            try:
                ready = self._ep.poll(max(0.0, next_sweep - time.monotonic()))
                for fd, _ in ready:
                    self._on_event(fd)
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + SWEEP_S
            except Exception:
                log.exception("event=background_error task=oom_watch")
                time.sleep(SWEEP_S)

    def _on_event(self, fd: int) -> None:
        if fd == self._wake:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
            return  # stop() asks the loop to look at _stopping
        with self._lock:
            a = self._by_fd.get(fd)
            if a is None:
                # Disarmed since the poll: its eventfd is closed, and its number may be another
                # file's by now (a socket's bytes must not be read here).
                return
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
            due = self._handle(a, event=True)
        if due:
            self._kill_one(a)

    def _sweep(self) -> None:
        """The sandboxes in a storm, event or not: what waits is killed, a quiet one let go."""
        with self._lock:
            storming = [a for a in self._armed.values() if a.storm]
        for a in storming:
            with self._lock:
                due = self._armed.get(a.sid) is a and self._handle(a, event=False)
            if due:
                self._kill_one(a)

    # -- one sandbox ----------------------------------------------------------------------------

    def _handle(self, a: _Armed, *, event: bool) -> bool:
        """One look at ``a`` (under the lock: a destroy's disarm waits for it); whether a kill
        is due, which :meth:`_kill_one` makes without the lock."""
        now = time.monotonic()
        try:
            state = read_control(a.dir / "memory.oom_control")
        except (OSError, ValueError):
            self.disarm(a.sid)  # the cgroup went (the kernel signals its removal too)
            return False
        if not a.storm:
            self._count_kernel_kills(a, state, now)
            return False
        if event or state["under_oom"]:
            a.last_oom = now
        if state["under_oom"]:
            return self._victim_gone(a, now)
        if now - a.last_oom >= QUIET_S:
            self._end_storm(a)
        return False

    def _count_kernel_kills(self, a: _Armed, state: dict[str, int], now: float) -> None:
        new, a.seen = state.get("oom_kill", 0) - a.seen, state.get("oom_kill", 0)
        a.kills.extend([now] * max(0, new))
        while a.kills and now - a.kills[0] > STORM_WINDOW_S:
            a.kills.popleft()
        if len(a.kills) >= STORM_KILLS and _set_disable(a.dir, 1):
            a.storm, a.last_oom = True, now
            log.warning("event=oom_storm sandbox=%s kernel_kills=%d window_s=%.0f detail=the agent "
                        "kills at this sandbox's limit until %.0f s pass without an OOM",
                        a.sid, len(a.kills), STORM_WINDOW_S, QUIET_S)  # fmt: skip
            a.kills.clear()

    def _end_storm(self, a: _Armed) -> None:
        _set_disable(a.dir, 0)
        a.storm = False
        self._forget_victim(a)
        log.info("event=oom_storm_end sandbox=%s quiet_s=%.0f", a.sid, QUIET_S)

    def _victim_gone(self, a: _Armed, now: float) -> bool:
        """Whether the process killed last is gone (as the kernel waits for its victim: its exit
        frees memory and wakes the waiters), or waited for long enough."""
        if a.victim >= 0:
            exited = cmds_procs.wait_exit(a.victim, 0)
            if not exited and now - a.killed_at < VICTIM_WAIT_S:
                return False
            self._forget_victim(a)
            if exited:  # its exit freed memory: the state read before it may be stale, and the
                # largest left can be an innocent one (a storm's own loop, between children)
                with contextlib.suppress(OSError, ValueError, KeyError):
                    return bool(read_control(a.dir / "memory.oom_control")["under_oom"])
                return False
        return True

    def _kill_one(self, a: _Armed) -> None:
        """Kill the largest process of ``a``'s ``cmds``. Ranked without the lock (a ``statm``
        read a process, ~8 ms at 1000: the event loop's arm and disarm do not wait for it), and
        only within ``a``'s :class:`RankBudget` (else the kill waits: an event or the sweep
        asks again); the kill under the lock, if ``a`` is still armed and no other came first."""
        if not a.budget.allows(time.monotonic()):
            a.paced.warn("event=oom_storm_paced sandbox=%s processes=%d reads_per_s=%d", a.sid,
                       a.budget.last, RANK_READS_S)  # fmt: skip
            return
        try:
            pids = cmds_procs.pids(a.dir / "cgroup.procs")
        except (OSError, ValueError):
            return
        a.budget.spend(len(pids))
        ranked = sorted(((resident(p), p) for p in pids), reverse=True)
        cmds = f"/{self._parent}/{a.sid}/{CMDS}"
        with self._lock:
            if self._armed.get(a.sid) is not a or a.victim >= 0:
                return
            for pages, pid in ranked:
                if (pidfd := cmds_procs.pin(pid, cmds)) is None:
                    continue
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    os.close(pidfd)
                    continue  # exited meanwhile: the next largest
                process_mrelease(pidfd)
                a.victim, a.killed_at = pidfd, time.monotonic()
                a.log.warn("event=oom_kill sandbox=%s pid=%d rss_kib=%d", a.sid, pid, pages * _PAGE_KIB)
                self._killed(1)
                return

    def _forget_victim(self, a: _Armed) -> None:
        if a.victim >= 0:
            os.close(a.victim)
            a.victim = -1


def _set_disable(cmds: Path, value: int) -> bool:
    """``oom_kill_disable`` of ``cmds`` (0 wakes whatever waits, for the kernel to kill); False
    if the cgroup is going."""
    try:
        (cmds / "memory.oom_control").write_text(str(value))
        return True
    except OSError:
        return False


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

WATCH = OomWatch()  # the agent's one watch (runtime/oci.py arms, agent/main.py runs it)
