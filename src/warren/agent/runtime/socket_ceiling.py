"""A hard ceiling on a runc/crun sandbox's socket memory: the agent's own OOM-like kill (v1).

socket_memory.py bounds each sandbox's TCP/UDP buffers (``memory.kmem.tcp.limit_in_bytes``),
but the kernel still charges every TCP socket about a packet past a full bound (a segment
received onto an empty queue, one send skb on an empty write queue: ~66 KiB a loopback socket),
while a socket costs the sandbox ~3.8 KiB of its memory limit. 3000 sockets at an 8 MiB bound
held 195 MiB; a 256 MiB sandbox could reach ~60k sockets, ~4 GiB of the host's memory. On v1
those forced charges land in the counter (``memory.kmem.tcp.usage_in_bytes`` goes past the
limit), so the agent sees them, and acts:

* every :data:`TICK` seconds one read of that counter per bounded sandbox (its memory cgroup:
  hierarchical, the guest's sockets and ``cmds``'); all sandboxes in one thread hop;
* past :func:`ceiling` (twice the bound: the bound again as allowance, 16-256 MiB, ~250 sockets'
  forced packets at the 16 MiB floor; an ordinary workload at the bound stays within a few
  packets of it), the process of the sandbox's ``cmds`` that holds the most socket descriptors
  is killed, then the next, re-reading the counter after each exit, until the usage is back
  under the bound (or :data:`MAX_KILLS` this tick). The guest is never a candidate: it is in
  the sandbox's cgroup, not in ``cmds``.

Only host cgroupfs files and ``/proc/<pid>/fd`` link targets (strings) are read; no tenant path
is resolved. A pid from ``cgroup.procs`` is pinned by a pidfd before its ``/proc`` entries are
read and checked alive through it after (a pid is not reused before its process is reaped), and
the kill goes through the same pidfd: exactly the process counted is killed.

Skipped: sandboxes whose cgroup has no bound (gVisor: netstack memory is the Sentry's, charged
to the sandbox's limit; a sandbox re-adopted from an agent before the bound; v2 hosts, where the
file does not exist) and paused ones (the caller lists running sandboxes only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.agent.runtime.socket_memory import LIMIT, USAGE

log = logging.getLogger("warren.agent")

CGROUP_ROOT = Path("/sys/fs/cgroup")
TICK = 0.5  # seconds between two reads of every sandbox's counter
UNBOUNDED = 1 << 62  # a limit at or above this is the kernel's default (never written)
LIMIT_REFRESH = 30.0  # seconds a sandbox's bound is trusted (a warm claim's resize moves it)
MAX_KILLS = 32  # per sandbox and tick
KILL_WAIT = 1.0  # seconds to wait for a victim's exit before reading the counter again
ENFORCE_S = 5.0  # seconds one sandbox's kills may take in a tick (its victims' exits)
LOG_BURST = 8  # kill lines per sandbox, then one per LOG_EVERY seconds (the rest counted)
LOG_EVERY = 10.0


def ceiling(limit: int) -> int:
    """The usage past which processes are killed: the bound twice over."""
    return 2 * limit


def choose(candidates: Iterable[tuple[int, int]]) -> int | None:
    """The victim among ``(pid, socket descriptors)``: the most sockets, the newest pid on a
    tie; None when no process holds a socket."""
    best = max(((n, pid) for pid, n in candidates if n > 0), default=None)
    return None if best is None else best[1]


@dataclass
class _Watched:
    usage: str  # the path of the sandbox's counter
    limit: int = 0  # the bound; 0: not bounded (skipped)
    read_at: float = -LIMIT_REFRESH
    tokens: float = LOG_BURST
    filled_at: float = field(default_factory=time.monotonic)
    suppressed: int = 0  # kills not logged since the last line


def _read_int(path: Path | str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # os, not open(): a third of the cost
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


def _sockets(pid: int) -> int:
    """Socket descriptors of ``pid`` (link targets only: nothing is followed)."""
    n = 0
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        with contextlib.suppress(OSError):
            if os.readlink(f"{base}/{fd}").startswith("socket:["):
                n += 1
    return n


def _in(line: str, cmds: str) -> bool:
    """Whether a line of /proc/<pid>/cgroup puts the process in ``cmds`` of the memory tree."""
    _, controllers, path = line.split(":", 2)
    return path == cmds and "memory" in controllers.split(",")


def _pinned(pid: int, cmds: str) -> tuple[int, int] | None:
    """``(pidfd, sockets)`` of ``pid`` if it is (still) a process of ``cmds`` (its memory cgroup
    path, as /proc/<pid>/cgroup gives it); None if it is gone or elsewhere."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if not any(_in(x, cmds) for x in lines):
            raise ProcessLookupError(pid)
        n = _sockets(pid)
        signal.pidfd_send_signal(pidfd, 0)  # alive: the pid was its all along
        return pidfd, n
    except OSError:
        os.close(pidfd)
        return None


class SocketCeiling:
    """The watchdog's state across ticks; :meth:`tick` runs in a thread."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self._root = root / "memory" / CGROUP_PARENT
        self._watched: dict[str, _Watched] = {}
        self.available = (root / "memory" / LIMIT).exists()

    def tick(self, sandbox_ids: Iterable[str]) -> int:
        """One look at each sandbox (one counter read); the number of processes killed."""
        ids = set(sandbox_ids)
        for gone in self._watched.keys() - ids:
            del self._watched[gone]
        kills = 0
        for sid in ids:
            w = self._watched.get(sid) or self._watched.setdefault(
                sid, _Watched(str(self._root / sid / USAGE))
            )
            if time.monotonic() - w.read_at >= LIMIT_REFRESH:
                self._refresh(sid, w)
            if not w.limit:
                continue
            try:
                usage = _read_int(w.usage)
                if usage > ceiling(w.limit):
                    self._refresh(sid, w)  # the bound may have moved since it was read
                    if w.limit and usage > ceiling(w.limit):
                        kills += self._enforce(sid, w, usage)
            except (OSError, ValueError):
                continue  # the sandbox is going: its cgroup with it
        return kills

    def _refresh(self, sid: str, w: _Watched) -> None:
        d = self._root / sid
        w.read_at = time.monotonic()
        try:
            limit = _read_int(d / LIMIT)
        except (OSError, ValueError):
            limit = 0
        w.limit = limit if limit < UNBOUNDED and (d / "cmds").is_dir() else 0

    def _enforce(self, sid: str, w: _Watched, usage: int) -> int:
        """Kill ``cmds``' socket holders, most sockets first, until the usage is under the
        bound, at most :data:`MAX_KILLS` or :data:`ENFORCE_S`; the number killed. A process
        killed and not gone yet (the wait ran out) is not chosen again."""
        top, deadline = ceiling(w.limit), time.monotonic() + ENFORCE_S
        killed: list[int] = []
        cmds = f"/{CGROUP_PARENT}/{sid}/cmds"
        procs = self._root / sid / "cmds" / "cgroup.procs"
        while len(killed) < MAX_KILLS and time.monotonic() < deadline:
            pinned: dict[int, tuple[int, int]] = {}
            try:
                for pid in map(int, procs.read_text().split()):
                    if pid not in killed and (p := _pinned(pid, cmds)) is not None:
                        pinned[pid] = p
                victim = choose((pid, n) for pid, (_, n) in pinned.items())
                if victim is None:
                    msg = "event=socket_memory_no_victim sandbox=%s usage=%d ceiling=%d"
                    self._say(w, msg, sid, usage, top)
                    break
                pidfd, sockets = pinned[victim]
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed.append(victim)
                _wait_exit(pidfd)
            except (OSError, ValueError):
                break  # the cgroup is going, or the victim went by itself: the next tick sees
            finally:
                for fd, _ in pinned.values():
                    os.close(fd)
            self._say(
                w,
                "event=socket_memory_kill sandbox=%s pid=%d sockets=%d usage=%d ceiling=%d",
                sid, victim, sockets, usage, top,
            )  # fmt: skip
            with contextlib.suppress(OSError, ValueError):
                usage = _read_int(w.usage)
            if usage <= w.limit:
                break
        return len(killed)

    def _say(self, w: _Watched, fmt: str, *args: object) -> None:
        """A warning from the sandbox's bucket; what it does not allow is counted, then told."""
        now = time.monotonic()
        w.tokens = min(LOG_BURST, w.tokens + (now - w.filled_at) / LOG_EVERY)
        w.filled_at = now
        if w.tokens < 1:
            w.suppressed += 1
            return
        w.tokens -= 1
        log.warning(fmt + " suppressed=%d", *args, w.suppressed)
        w.suppressed = 0


def _wait_exit(pidfd: int) -> None:
    """Until the process has exited (its descriptors, its sockets, closed) or KILL_WAIT."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    with contextlib.suppress(InterruptedError):
        p.poll(KILL_WAIT * 1000)


async def watch(running: Callable[[], list[str]], killed: Callable[[int], None]) -> None:
    """The agent's loop: every :data:`TICK`, the ``running()`` sandboxes in one thread hop;
    ``killed(n)`` counts the kills (the metrics counter)."""
    ceiling_ = SocketCeiling()
    if not ceiling_.available:
        return  # socket_memory logged why (v2, or no kmem accounting): nothing is bounded
    while True:
        await asyncio.sleep(TICK)
        try:
            ids = running()
            if ids and (n := await asyncio.to_thread(ceiling_.tick, ids)):
                killed(n)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=background_error task=socket_ceiling")
