"""The agent, not the kernel, chooses a runc/crun sandbox's OOM victims: never the guest.

Inside a sandbox's memory cgroup the kernel's OOM killer takes the process with the highest
``oom_score_adj``-weighted size. The guest (the container's init, whose death is the sandbox's)
keeps score 0 and starts every command at 1000, but a tenant process (``nobody`` too) may lower
its own score to its floor, ``oom_score_adj_min``, which is 0 unless a writer with
CAP_SYS_RESOURCE raised it (``guest_oom.py``; the reference machines' root cannot). At 0, with the
memory held by processes smaller than the guest or where no size shows it (pipe buffers), the
kernel took the guest (session 16, test_attack_session16_guest_oom.py).

So, once the container runs, the agent turns the kernel's killer off in the sandbox's cgroup
(cgroup v1 ``memory.oom_control`` = 1: a task that faults at the limit then waits, ``under_oom``
1) and registers an eventfd for its OOM notifications (``cgroup.event_control``). One agent
thread watches every sandbox's eventfd, and reads each ``under_oom`` once a :data:`TICK` too (a
notification is sent once per OOM episode; a missed one costs at most a tick). While ``under_oom``
is 1 it kills (SIGKILL, through a pidfd: no pid reuse) the cgroup's largest process by RSS plus
swap that is not the init, waits for it to exit, re-reads, repeats: at most
:data:`KILLS_PER_ROUND` a round, the rest at the next event or tick. Only when nothing but the
init (and processes already killed and exiting) is left does it hand the cgroup back to the
kernel's killer (``oom_kill_disable`` 0: the waiting tasks retry and the kernel acts), so a
sandbox never hangs on the agent; once the OOM is over the agent takes the choice back.

While the agent is away (a restart) the sandbox's tasks that fault at the limit wait; the next
agent re-adopts the sandbox (:meth:`OomGuard.adopt`), and arming handles a pending OOM at once.
A paused (frozen) sandbox is left until it is thawed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("warren.agent")

CGROUP_ROOT = Path("/sys/fs/cgroup")
TICK = 0.5  # seconds between reads of every watched cgroup's under_oom and usage
MARGIN = 2 << 20  # the guest's reserve (least): a cgroup this close to its limit (file cache aside) is full
MAX_MARGIN = 32 << 20
KILLS_PER_ROUND = 16  # per sandbox and round; a round's wait for its victims is bounded with it
DEATH_WAIT = 0.25  # seconds a victim is given to exit before the next is picked anyway
DYING_S = 5.0  # a killed process still there after this no longer holds the hand-back
LOG_PER_S = 8  # oom_kill lines per sandbox and second; the rest are counted


@dataclass
class _Watch:
    container_id: str
    cgroup: Path  # its memory cgroup
    init: int  # the guest's host pid
    event: int  # the eventfd its OOM notifications signal
    control: int  # memory.oom_control, open (the notifications' registration is on it)
    usage: int  # memory.usage_in_bytes, open (the reserve's threshold is on it)
    limit: int  # memory.limit_in_bytes, open
    near: int = -1  # the eventfd of the threshold at the limit less the reserve
    near_limit: int = 0  # the limit that threshold was set for
    released: bool = False  # handed back to the kernel's killer
    killed: dict[int, float] = field(default_factory=dict)  # pid -> when
    log_second: int = 0
    logged: int = 0
    unlogged: int = 0


def oom_control(text: str) -> dict[str, int]:
    """``memory.oom_control``'s lines (``oom_kill_disable``, ``under_oom``, ``oom_kill``)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def size(pid: int, proc: Path = Path("/proc")) -> int:
    """What the process holds: RSS plus swap, in bytes (0: gone, a zombie, a kernel thread)."""
    total = 0
    try:
        with open(proc / str(pid) / "status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmSwap:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def memory_cgroup(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The process's memory cgroup (cgroup v1), relative to the hierarchy's root."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


def members(cgroup: Path) -> list[int]:
    """Every process of the cgroup and of any cgroup under it."""
    pids: list[int] = []
    for d, _, _ in os.walk(cgroup):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
    return pids


def margin(limit: int) -> int:
    """The guest's reserve below a cgroup's limit: 1/16 of it, 2 to 32 MiB."""
    return max(MARGIN, min(limit // 16, MAX_MARGIN))


def excess(cgroup: Path) -> int:
    """Bytes to free for the cgroup to hold, file cache aside, twice its reserve below its limit
    again; 0 while it holds less than its limit less one reserve (hysteresis: a kill frees
    room for more than the next fork)."""
    usage = int((cgroup / "memory.usage_in_bytes").read_text())
    limit = int((cgroup / "memory.limit_in_bytes").read_text())
    cache = 0
    with open(cgroup / "memory.stat", "rb") as f:
        for line in f:
            if line.startswith((b"total_inactive_file ", b"total_active_file ")):
                cache += int(line.split()[1])
    held, room = usage - cache, margin(limit)
    return 0 if held < limit - room else held - (limit - 2 * room)


def _register(cgroup: Path, event: int, target: int, threshold: int | None = None) -> None:
    """A cgroup v1 notification: OOM (on memory.oom_control) or a usage threshold."""
    fd = os.open(cgroup / "cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, f"{event} {target}{'' if threshold is None else f' {threshold}'}".encode())
    finally:
        os.close(fd)


def ranked(
    pids: list[int], init: int, killed: dict[int, float], proc: Path = Path("/proc")
) -> list[tuple[int, int]]:
    """``(pid, bytes)`` of every process but the init and those already killed, largest first."""
    sizes = [(pid, size(pid, proc)) for pid in pids if pid != init and pid not in killed]
    return sorted([x for x in sizes if x[1] > 0], key=lambda x: -x[1])


def pick(
    pids: list[int], init: int, killed: dict[int, float], proc: Path = Path("/proc")
) -> tuple[int, int] | None:
    """``(pid, bytes)`` of the largest process that is not the init nor already killed."""
    return next(iter(ranked(pids, init, killed, proc)), None)


class OomGuard:
    """One thread for every sandbox; :meth:`arm` after a start, :meth:`disarm` at its end."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._armed: dict[str, _Watch] = {}
        self._by_event: dict[int, _Watch] = {}
        self._epoll: select.epoll | None = None

    def arm(self, container_id: str, init: int, cgroup: Path) -> bool:
        """The kernel's killer off in ``cgroup`` (the container's memory cgroup), its OOM
        notifications and its reserve watched; a pending OOM is handled at once. False (logged)
        when the cgroup cannot be set: the kernel's killer stays, as before."""
        self.disarm(container_id)
        fds: list[int] = []
        try:
            (cgroup / "memory.oom_control").write_text("1")
            for name in ("memory.oom_control", "memory.usage_in_bytes", "memory.limit_in_bytes"):
                fds.append(os.open(cgroup / name, os.O_RDONLY | os.O_CLOEXEC))
            fds.append(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
            _register(cgroup, fds[3], fds[0])
            watch = _Watch(container_id, cgroup, init, fds[3], fds[0], fds[1], fds[2])
            self._near(watch)
        except OSError as e:
            log.warning("event=oom_guard_unarmed container_id=%s error=%s", container_id, e)
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                (cgroup / "memory.oom_control").write_text("0")
            return False
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, name="oom-guard", daemon=True).start()
            self._armed[container_id] = watch
            for fd in (watch.event, watch.near):
                self._by_event[fd] = watch
                self._epoll.register(fd, select.EPOLLIN)
        os.eventfd_write(watch.event, 1)  # an OOM pending since before (a restart): handled now
        return True

    def _near(self, watch: _Watch) -> None:
        """(Re)sets the threshold :func:`margin` below the cgroup's limit (a warm-pool claim
        changes the limit after the arming): its crossings wake the thread."""
        limit = int(os.pread(watch.limit, 32, 0))
        near = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            _register(watch.cgroup, near, watch.usage, max(0, limit - margin(limit)))
        except OSError:
            os.close(near)
            raise
        old, watch.near, watch.near_limit = watch.near, near, limit
        if old >= 0:
            if self._epoll is not None:
                with contextlib.suppress(OSError):
                    self._epoll.unregister(old)
                self._epoll.register(near, select.EPOLLIN)
            self._by_event.pop(old, None)
            self._by_event[near] = watch
            os.close(old)

    def adopt(self, init: int) -> bool:
        """A re-adopted container, known by its init's host pid: its cgroup is the init's."""
        rel = memory_cgroup(init)
        if not rel or rel == "/":
            log.warning("event=oom_guard_unarmed pid=%d error=no memory cgroup", init)
            return False
        return self.arm(rel.rstrip("/").rsplit("/", 1)[-1], init, self.root / "memory" / rel.lstrip("/"))

    def disarm(self, container_id: str) -> None:
        with self._lock:
            watch = self._armed.pop(container_id, None)
            if watch is None:
                return
            for fd in (watch.event, watch.near):
                self._by_event.pop(fd, None)
                if self._epoll is not None:
                    with contextlib.suppress(OSError):
                        self._epoll.unregister(fd)
            # Closing an eventfd ends its registration (the kernel drops it with the file).
            for fd in (watch.event, watch.near, watch.control, watch.usage, watch.limit):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def armed(self) -> list[str]:
        with self._lock:
            return list(self._armed)

    def _run(self) -> None:
        assert self._epoll is not None
        next_tick = time.monotonic() + TICK
        while True:
            try:
                events = self._epoll.poll(max(0.0, next_tick - time.monotonic()))
            except InterruptedError:
                continue
            due: dict[str, _Watch] = {}
            with self._lock:  # the fds are only used under it: disarm closes them under it
                for fd, _ in events:
                    if (watch := self._by_event.get(fd)) is not None:
                        with contextlib.suppress(OSError):
                            os.eventfd_read(fd)
                        due[watch.container_id] = watch
                if time.monotonic() >= next_tick:
                    for watch in self._armed.values():
                        if self._due(watch):
                            due[watch.container_id] = watch
                    next_tick = time.monotonic() + TICK
            for watch in due.values():
                try:
                    self._round(watch)
                except Exception:  # one sandbox's surprise must not end every sandbox's guard
                    log.exception("event=oom_guard_error container_id=%s", watch.container_id)

    def _due(self, watch: _Watch) -> bool:
        """At a tick (under the lock): whether the cgroup needs a round (under OOM, handed back,
        or in its reserve); a changed limit moves the reserve's threshold."""
        try:
            under = oom_control(os.pread(watch.control, 256, 0).decode()).get("under_oom")
            limit = int(os.pread(watch.limit, 32, 0))
            if limit != watch.near_limit:
                self._near(watch)
            near = int(os.pread(watch.usage, 32, 0)) >= limit - margin(limit)
            return bool(under) or watch.released or near
        except (OSError, ValueError):
            return False

    def _round(self, watch: _Watch) -> None:
        """While the cgroup is under OOM: kill its largest process but the init, wait, repeat."""
        control = watch.cgroup / "memory.oom_control"
        try:
            state = oom_control(control.read_text())
        except OSError:  # the cgroup is gone (its removal signals the eventfd): destroyed
            return
        if watch.released:
            if not state.get("under_oom") and os.path.exists(f"/proc/{watch.init}"):
                with contextlib.suppress(OSError):
                    control.write_text("1")
                    watch.released = False
                    log.info("event=oom_guard_rearmed container_id=%s", watch.container_id)
            return
        if self._frozen(watch):
            return  # its processes cannot exit until it is thawed; the tick comes back
        now = time.monotonic()
        watch.killed = {p: t for p, t in watch.killed.items() if now - t < 60}
        if not state.get("under_oom"):
            self._reserve(watch)
            return
        for _ in range(KILLS_PER_ROUND):
            if not state.get("under_oom"):
                return
            pids = members(watch.cgroup)
            victim = pick(pids, watch.init, watch.killed)
            if victim is None:
                now = time.monotonic()
                if not any(p in watch.killed and now - watch.killed[p] < DYING_S for p in pids):
                    self._release(watch, control)
                    return
                time.sleep(DEATH_WAIT / 5)  # a victim still exiting: its memory comes back
            else:
                self._kill(watch, *victim)
            try:
                state = oom_control(control.read_text())
            except OSError:
                return

    def _reserve(self, watch: _Watch) -> None:
        """Charges made in a system call (a fork's, a pipe's, an accept's) are refused at the
        limit (ENOMEM) with no OOM wait nor notification, and the guest's would be too: so the
        last :func:`margin` is the guest's. When what the cgroup holds, file cache aside, is in
        it, the largest processes but the init go (twice the reserve freed), as the kernel's
        killer would have taken them at the limit."""
        for _ in range(4):
            try:
                need = excess(watch.cgroup)
            except (OSError, ValueError):
                return
            if need <= 0:
                return
            # One ranking for as many victims as the excess takes (a filler refills fast), the
            # largest first; then wait for the last and look again.
            victims = []
            for victim in ranked(members(watch.cgroup), watch.init, watch.killed)[:KILLS_PER_ROUND]:
                victims.append(victim)
                need -= victim[1]
                if need <= 0:
                    break
            if not victims:
                return  # the guest's own memory: nothing hangs, nothing to kill
            for i, victim in enumerate(victims):
                self._kill(watch, *victim, wait=i == len(victims) - 1)

    def _kill(self, watch: _Watch, pid: int, held: int, wait: bool = True) -> None:
        watch.killed[pid] = time.monotonic()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # gone already
        try:
            # The pid is this process from the pidfd's opening on: is it still the sandbox's?
            rel = memory_cgroup(pid)
            path = None if rel is None else self.root / "memory" / rel.lstrip("/")
            if path is None or (path != watch.cgroup and watch.cgroup not in path.parents):
                return
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            self._log_kill(watch, pid, held)
            if not wait:
                return
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(DEATH_WAIT * 1000)  # readable when it has exited
        except OSError:
            pass
        finally:
            os.close(pidfd)

    def _log_kill(self, watch: _Watch, pid: int, held: int) -> None:
        second = int(time.monotonic())
        if second != watch.log_second:
            if watch.unlogged:
                log.warning(
                    "event=oom_kill_unlogged container_id=%s count=%d", watch.container_id, watch.unlogged
                )
            watch.log_second, watch.logged, watch.unlogged = second, 0, 0
        if watch.logged >= LOG_PER_S:
            watch.unlogged += 1
            return
        watch.logged += 1
        log.warning("event=oom_kill container_id=%s pid=%d rss=%d", watch.container_id, pid, held)

    def _release(self, watch: _Watch, control: Path) -> None:
        """Nothing but the guest is left to kill: the kernel's killer acts (on the guest, most
        likely) rather than the sandbox hanging."""
        with contextlib.suppress(OSError):
            control.write_text("0")
            watch.released = True
            log.warning(
                "event=oom_guard_released container_id=%s detail=only the init is left", watch.container_id
            )

    def _frozen(self, watch: _Watch) -> bool:
        rel = watch.cgroup.relative_to(self.root / "memory")
        try:
            return (self.root / "freezer" / rel / "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return False


GUARD = OomGuard()  # the agent's one guard (runc and crun sandboxes alike)
