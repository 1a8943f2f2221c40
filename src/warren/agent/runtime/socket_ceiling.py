"""A hard ceiling on a runc/crun sandbox's socket memory: the agent's own OOM-like kill (v1).

socket_memory.py bounds each sandbox's TCP/UDP buffers (``memory.kmem.tcp.limit_in_bytes``),
but the kernel still charges every TCP socket about a packet past a full bound (a segment
received onto an empty queue, one send skb on an empty write queue: ~66 KiB a loopback socket),
while a socket costs the sandbox ~3.8 KiB of its memory limit. 3000 sockets at an 8 MiB bound
held 195 MiB; a 256 MiB sandbox could reach ~60k sockets, ~4 GiB of the host's memory. On v1
those forced charges land in the counter (``memory.kmem.tcp.usage_in_bytes`` goes past the
limit), so the agent sees them, and acts:

* every :data:`TICK` seconds one read of that counter per bounded sandbox (its memory cgroup:
  hierarchical, the guest's sockets and ``cmds``'); all sandboxes in one thread hop, which only
  reads: a sandbox past a ceiling is handed to an enforcement worker (below) and skipped by the
  ticks until its enforcement is over;
* past :func:`ceiling` (twice the bound: the bound again as allowance, 16-256 MiB, ~250 sockets'
  forced packets at the 16 MiB floor; an ordinary workload at the bound stays within a few
  packets of it), the process of the sandbox's ``cmds`` that holds the most socket descriptors
  is killed, then the next, re-reading the counter after each exit, until the usage is back
  under the bound (or :data:`MAX_KILLS` this enforcement). The guest is never a candidate: it is in
  the sandbox's cgroup, not in ``cmds``.

Only host cgroupfs files and ``/proc/<pid>/fd`` link targets (strings) are read; no tenant path
is resolved. A pid from ``cgroup.procs`` is pinned by a pidfd before its ``/proc`` entries are
read and checked alive through it after (a pid is not reused before its process is reaped), and
the kill goes through the same pidfd: exactly the process counted is killed.

The sockets' number, too (:func:`count_ceiling`). A connection made to a listener of the
sandbox completes in the kernel and waits in the listener's accept queue as a full socket
(~4 KiB of slab and a page of the host's ``tcp_mem``) that no cgroup is charged for until it is
accepted; the client may close at once. 16 listeners of 4096 held 65 536 (~256 MiB of slab, as
much tcp_mem) outside a 256 MiB sandbox, ~140 reach the host's tcp_mem hard limit. Each tick
also reads the sockets of the sandbox's network namespace (its guest's ``/proc/<pid>/net/
sockstat``, kernel procfs: ``sockets: used``, +6.5 us a sandbox; past the ceiling ``TCP: inuse`` and
sockstat6's ``TCP6: inuse``, the count compared; queued children are counted); past the ceiling
the ``cmds`` process whose sockets weigh most is killed, a listener weighing 1 + its accept
queue (``/proc/<pid>/net/tcp{,6}``, read only then), other sockets 1, until the count is back
under it (the listener's close frees its queue).

And netlink sockets, whose memory no cgroup is charged for (netlink_ceiling.py): their number
(read only when ``sockets: used`` is past its ceiling too) and the bytes queued in them (their
table, read every tick: 20 sockets held 160 MiB); past either the heaviest holders die.

When the heaviest-first kills run out while still over (no process of ``cmds`` holds a socket
descriptor, ``*_no_victim``; or :data:`MAX_KILLS` / :data:`ENFORCE_S` spent on
:data:`SPENT_TICKS` enforcements in a row) every process of ``cmds`` is killed
(``event=socket_memory_kill_all`` / ``socket_count_kill_all``, the same counter). Sockets sent
over a unix socket (SCM_RIGHTS) and closed by the sender are held by its queue, by no process:
its holder weighs 1, a leader that exited alone (``SYS_exit``, its threads live on) shows
none in ``/proc/<pid>/fd``, and a forker keeping heavier decoys alive spends every enforcement's
kills on them (session 19: 47 MiB held past a 32 MiB ceiling for good); the queue's
sockets are freed with its last holder. Only the tenant's commands die (the guest is not in
``cmds``), and only past the ceiling, which an ordinary workload does not reach.

Enforcement is off the tick (session 20): a pass of the kills pins every process of ``cmds``
and reads its descriptors, a cost the tenant sets (800 processes of ~4000 descriptors: ~12 s a
pass), and one tick doing all sandboxes' kills in turn let one sandbox hold the others' reads
that long. Now at most :data:`WORKERS` threads enforce at once, one sandbox each; a sandbox past
a ceiling while they are busy waits (``event=socket_watchdog_queued``, rate-bounded), turns fair
between teams (enforce_workers.py: a team holds at most all workers but one, and a free worker
takes the sandbox whose team holds the fewest), and one enforced again waits its turn anew. A
pass stops at :data:`ENFORCE_S` too ("spent"), so an enforcement holds its worker for at most
about twice that (the kills, then all of ``cmds``). A queued sandbox no longer listed (gone,
paused) is dropped. "Two in a row" counts enforcements: the second handed over by the first
tick that looked after the first ended.

A forker refilling what the kills freed (session 26): 12 children each filling a listener's
queue with 4096 closed clients, one replaced as soon as it was killed, kept a 64 MiB sandbox's
namespace at up to 33-39k TCP sockets (ceiling 4096; ~8 KiB uncharged each), past 4x the
ceiling for 3-7 s of an 8 s run, once for all of it (the forker lived): one holder killed a
pass, each weighed by the queues read when the enforcement began (a listener made since weighed
1). So the levels whose weights are in their own unit (the TCP count, the netlink levels) kill
in batches (:func:`batch`: the heaviest covering the excess, at once), weigh with the queues
read with the level each pass, and count each pass that killed as one in a row (a pass after a
batch, or an enforcement within :data:`REFILL_GAP` ticks of the last, found the level past
again): at :data:`COUNT_REFILLS` (the count) or :data:`REFILL_TICKS` (netlink) all of ``cmds``
is killed. Measured: past 4x the ceiling for 0.0-0.3 s (before: 2.9-7.3 s).

Skipped: sandboxes whose cgroup has no bound (gVisor: netstack memory is the Sentry's, charged
to the sandbox's limit; a sandbox re-adopted from an agent before the bound; v2 hosts, where the
file does not exist) and paused ones (the caller lists running sandboxes only).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from warren import footprint
from warren.agent.runtime import cmds_procs, netlink_ceiling
from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.agent.runtime.enforce_workers import Workers
from warren.agent.runtime.socket_memory import LIMIT, USAGE
from warren.guest.guest_agent.kernfs import read_small

log = logging.getLogger("warren.agent")
_T = TypeVar("_T")

CGROUP_ROOT = Path("/sys/fs/cgroup")
TICK = 0.5  # seconds between two reads of every sandbox's counter
UNBOUNDED = 1 << 62  # a limit at or above this is the kernel's default (never written)
LIMIT_REFRESH = 30.0  # seconds a sandbox's bound is trusted (a warm claim's resize moves it)
MAX_KILLS = 32  # per sandbox and enforcement
ENFORCE_S = 5.0  # seconds one sandbox's kills may take in an enforcement (its victims' exits)
SPENT_TICKS = 2  # enforcements in a row whose kills ran out while still over: then all of cmds
REFILL_TICKS = 4  # ... or (netlink levels) passes that killed, each finding the level past again
COUNT_REFILLS = 2  # ... the TCP count's (a single holder of queues is killed by the first)
REFILL_GAP = 4  # ticks (2 s) within which a level past again counts as refilled
WORKERS = 4  # enforcements at once (threads); more sandboxes past a ceiling wait their team's turn
SETTLE_S = 0.05  # after kills, before "no victim" kills all: deferred fputs (delayed_fput)
COUNT_FLOOR = 4096  # TCP sockets any bounded sandbox may hold
COUNT_UNIT = 16 << 10  # bytes of the sandbox's memory per TCP socket past the floor
LISTEN = b"0A"  # a listener's state in /proc/net/tcp{,6}


def ceiling(limit: int) -> int:
    """The usage past which processes are killed: the bound twice over (the scheduler counts
    it in a host's capacity: warren/footprint.py)."""
    return footprint.SOCKET_CEILING_FACTOR * limit


def count_ceiling(memory: int) -> int:
    """The TCP sockets (both families) a sandbox's namespace may hold: one per 16 KiB of its
    memory, at least 4096 (16 384 for 256 MiB). A queued child costs the host ~8 KiB no cgroup
    is charged for (slab + a page of tcp_mem), so at the ceiling that is ~half the sandbox's
    memory; a server with thousands of connections (both ends count when its clients are in
    the sandbox too) stays under it."""
    return max(COUNT_FLOOR, memory // COUNT_UNIT)


def backlogs(tables: Iterable[bytes]) -> dict[int, int]:
    """Listener inode -> its accept queue's length, from /proc/<pid>/net/tcp{,6} text: for a
    listener (state 0A) rx_queue is the queue. The queued children's rows (inode 0) are not."""
    out: dict[int, int] = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            if b" 0A " not in line:  # the only two-digit field between spaces is the state
                continue
            f = line.split(None, 10)
            if len(f) > 9 and f[3] == LISTEN:
                out[int(f[9])] = int(f[4].split(b":")[1], 16)
    return out


def choose(candidates: Iterable[tuple[int, int]]) -> int | None:
    """The victim among ``(pid, weight)`` (socket descriptors, listeners weighing 1 + their
    queue): the heaviest, the newest pid on a tie; None when no process holds a socket."""
    best = max(((n, pid) for pid, n in candidates if n > 0), default=None)
    return None if best is None else best[1]


def batch(candidates: Iterable[tuple[int, int]], excess: int) -> list[int]:
    """The victims among ``(pid, weight)``, weights in the level's own unit: the heaviest first
    (the newest pid on a tie), as many as it takes to cover ``excess``; none when no process
    holds any."""
    out, covered = [], 0
    for n, pid in sorted(((n, pid) for pid, n in candidates if n > 0), reverse=True):
        if covered >= excess:
            break
        out.append(pid)
        covered += n
    return out


@dataclass
class _Watched:
    usage: str  # the path of the sandbox's counter
    limit: int = 0  # the bound; 0: not bounded (skipped)
    read_at: float = -LIMIT_REFRESH
    count_top: int = 0  # count_ceiling of the sandbox's memory; 0: its guest not found
    guest: int = 0  # the sandbox's init (cmds_procs.init_of): its network namespace
    uncharged_top: int = 0  # netlink_ceiling.uncharged_ceiling of its memory (with count_top)
    queue_top: int = 0  # netlink_ceiling.queue_ceiling of its memory
    queue_read: int = 0  # the tick its netlink table was last read at (staggered at first)
    log: cmds_procs.LogBucket = field(default_factory=cmds_procs.LogBucket)
    # event -> (the tick when its last enforcement ended, spent ones in a row)
    spent: dict[str, tuple[int, int]] = field(default_factory=dict)
    handed: int = 0  # the tick that handed its enforcement (in flight or last) to a worker


_QUEUE_EVERY = netlink_ceiling.QUEUE_EVERY


def _read_int(path: Path | str) -> int:
    return int(read_small(path, 64))


def _field(text: bytes, key: bytes) -> int:
    i = text.index(key) + len(key)
    return int(text[i : i + 12].split(None, 1)[0])  # "TCP6: inuse N" ends its line


def _used(pid: int) -> int:
    """Sockets of every kind in ``pid``'s namespace (``sockets: used``, queued children in): at
    least its TCP ones, from one file; the tick's cheap read."""
    return _field(read_small(f"/proc/{pid}/net/sockstat", 1024), b"sockets: used ")


def _inuse(pid: int) -> int:
    """TCP sockets (v4, v6 and v4-mapped) of ``pid``'s network namespace, queued children in."""
    base = f"/proc/{pid}/net/"
    n = _field(read_small(base + "sockstat", 1024), b"TCP: inuse ")
    try:
        return n + _field(read_small(base + "sockstat6", 1024), b"TCP6: inuse ")
    except FileNotFoundError:  # a kernel without IPv6
        return n


def _tables(pid: int) -> dict[int, int]:
    """:func:`backlogs` of ``pid``'s namespace (tens of thousands of lines: read when over)."""
    texts = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{name}", "rb") as f:
            texts.append(f.read())
    return backlogs(texts)


def _sockets(pid: int, queued: dict[int, int] | None = None) -> int:
    """Socket descriptors of ``pid``, a listener of ``queued`` weighing 1 + its queue (link
    targets only: nothing is followed)."""
    return sum(1 + (queued.get(inode, 0) if queued else 0) for inode in cmds_procs.socket_inodes(pid))


def _pinned(pid: int, cmds: str, weigh: Callable[[int], int] = _sockets) -> tuple[int, int] | None:
    """``(pidfd, weigh(pid))`` if ``pid`` is (still) a process of ``cmds``; None if it is
    gone or elsewhere."""
    if (pidfd := cmds_procs.pin(pid, cmds)) is None:
        return None
    try:
        n = weigh(pid)
        cmds_procs.alive(pidfd)  # the pid was its all along
        return pidfd, n
    except OSError:
        os.close(pidfd)
        return None


def _nothing(_: int) -> None:
    pass


class _Current:
    """A level's weights as last read with it: each pass of an enforcement weighs with them."""

    def __init__(self, weigh: Callable[[int], int]) -> None:
        self.weigh = weigh

    def __call__(self, pid: int) -> int:
        return self.weigh(pid)


class SocketCeiling:
    """The watchdog's state across ticks; :meth:`tick` runs in a thread, each sandbox's
    enforcement in one of :attr:`workers`' (``killed(n)``: its kills, from there)."""

    def __init__(
        self, root: Path = CGROUP_ROOT, killed: Callable[[int], None] = _nothing, workers: int = WORKERS
    ) -> None:
        self._root = root / "memory" / CGROUP_PARENT
        self._watched: dict[str, _Watched] = {}
        self._ticks = 0
        self._queue_spent, self._queue_reads = 0.0, 0  # this tick's netlink table reads
        self._killed = killed
        self.workers = Workers(workers)
        self._queued = cmds_procs.LogBucket()  # all sandboxes': the workers are all busy
        self.available = (root / "memory" / LIMIT).exists()

    def tick(self, sandboxes: Mapping[str, str] | Iterable[str]) -> int:
        """One look at each sandbox not under enforcement (its counter, its namespace's socket
        count: cheap reads only); one past a ceiling is handed to a worker (:meth:`_check`
        there) for its team (``sandboxes``: container ids, or container id → team). The number
        handed."""
        ids = set(sandboxes)
        teams = sandboxes if isinstance(sandboxes, Mapping) else {}
        self._ticks += 1
        self._queue_spent, self._queue_reads = 0.0, 0
        for gone in self._watched.keys() - ids:
            del self._watched[gone]
        self.workers.drop(ids)
        handed = 0
        for sid in sorted(ids, key=self._queue_age):  # the longest unread netlink tables first
            if sid in self.workers:
                continue  # its worker reads it, and hands it back when done
            w = self._watched.get(sid) or self._watched.setdefault(sid, self._new_watched(sid))
            if time.monotonic() - w.read_at >= LIMIT_REFRESH:
                self._refresh(sid, w)
            if not self._over(sid, w):
                continue
            w.handed = self._ticks
            handed += 1
            if waiting := self.workers.submit(sid, functools.partial(self._check, sid, w), teams.get(sid)):
                msg = "event=socket_watchdog_queued sandbox=%s waiting=%d workers=%d"
                self._queued.warn(msg, sid, waiting, self.workers.size)
        return handed

    def _over(self, sid: str, w: _Watched) -> bool:
        """The tick's look: past the memory ceiling, or past the socket count's (cheap reads)."""
        if not w.limit:
            return False
        try:
            if _read_int(w.usage) > ceiling(w.limit):
                return True
        except (OSError, ValueError):
            return False  # the sandbox is going: its cgroup with it
        if not w.count_top:
            return False
        try:
            used = _used(w.guest)  # every kind: at least its TCP sockets, and its netlink ones
            if used > w.count_top:
                return True
            if used > w.uncharged_top and netlink_ceiling.count(w.guest)[0] > w.uncharged_top:
                return True
            return self._queue_over(w)
        except (OSError, ValueError):
            self._refresh(sid, w)  # the guest's pid went (a restart): find it again next tick
            return False

    def _new_watched(self, sid: str) -> _Watched:
        # Its first netlink table read: this tick or the next (new sandboxes in turn).
        first = self._ticks - _QUEUE_EVERY + len(self._watched) % _QUEUE_EVERY
        return _Watched(str(self._root / sid / USAGE), queue_read=first)

    def _queue_age(self, sid: str) -> int:
        w = self._watched.get(sid)
        return w.queue_read if w is not None else -1

    def _queue_over(self, w: _Watched) -> bool:
        """Its netlink table, if due and the tick's budget for them allows (a few sockets may
        hold GiBs; the read's cost is the host's, netlink_ceiling.QUEUE_BUDGET_S)."""
        if self._ticks - w.queue_read < netlink_ceiling.QUEUE_EVERY:
            return False
        if self._queue_reads and self._queue_spent >= netlink_ceiling.QUEUE_BUDGET_S:
            return False  # due still: early in the next tick's order
        t0 = time.monotonic()
        try:
            return netlink_ceiling.queued(w.guest) > w.queue_top
        finally:
            self._queue_spent += time.monotonic() - t0
            self._queue_reads += 1
            w.queue_read = self._ticks

    def _check(self, sid: str, w: _Watched) -> None:
        """A worker's: the counter read again and enforced, then the socket count; the kills
        counted (``killed``)."""
        try:
            usage = _read_int(w.usage)
        except (OSError, ValueError):
            return  # the sandbox is going: its cgroup with it
        kills = 0
        if usage > ceiling(w.limit):
            self._refresh(sid, w)  # the bound may have moved since it was read
            if w.limit and usage > ceiling(w.limit):
                kills = self._enforce(sid, w, usage)
        kills += self._count(sid, w)
        kills += self._netlink(sid, w)
        if kills:
            self._killed(kills)

    def _refresh(self, sid: str, w: _Watched) -> None:
        d = self._root / sid
        w.read_at = time.monotonic()
        try:
            limit = _read_int(d / LIMIT)
        except (OSError, ValueError):
            limit = 0
        w.limit = limit if limit < UNBOUNDED and (d / "cmds").is_dir() else 0
        try:
            w.guest = cmds_procs.init_of(d / "cgroup.procs")
            memory = _read_int(d / "memory.limit_in_bytes")
            w.count_top, w.uncharged_top = count_ceiling(memory), netlink_ceiling.uncharged_ceiling(memory)
            w.queue_top = netlink_ceiling.queue_ceiling(memory)
        except (OSError, ValueError, IndexError):
            w.guest = w.count_top = w.uncharged_top = w.queue_top = 0

    def _count(self, sid: str, w: _Watched) -> int:
        """The namespace's TCP sockets against :func:`count_ceiling`; the number killed. The
        cheap read goes through the cached guest pid; past the ceiling it is read again with
        the pid pinned and checked to be the sandbox's (a pid reused since is not trusted)."""
        if not w.count_top:
            return 0
        try:
            if _used(w.guest) <= w.count_top:  # then its TCP sockets are too
                return 0
        except (OSError, ValueError):
            self._refresh(sid, w)  # the guest's pid went (a restart): find it again next tick
            return 0
        guest = f"/{CGROUP_PARENT}/{sid}"
        queued = _through(w.guest, guest, _tables)
        checked = _through(w.guest, guest, _inuse)
        if queued is None or checked is None or checked <= w.count_top:
            return 0
        weights = _Current(functools.partial(_sockets, queued=queued))

        def again() -> int:  # the queues too: a listener made since weighed 1 (session 26)
            q, n = _through(w.guest, guest, _tables), _through(w.guest, guest, _inuse)
            if q is None or n is None:
                raise ProcessLookupError(w.guest)
            weights.weigh = functools.partial(_sockets, queued=q)
            return n

        return self._contain(sid, w, ("socket_count", "weight", "inuse"), checked, w.count_top,
                             w.count_top, again, weights, COUNT_REFILLS)  # fmt: skip

    def _netlink(self, sid: str, w: _Watched) -> int:
        """The namespace's netlink sockets (their number, their queues' bytes) against their
        ceilings (netlink_ceiling.LEVELS), read as :meth:`_count` reads (the guest pinned); the
        heaviest holders killed."""
        guest, kills = f"/{CGROUP_PARENT}/{sid}", 0
        tops = (w.uncharged_top, w.queue_top)
        for (event, unit, what, measure), top in zip(netlink_ceiling.LEVELS, tops, strict=True):
            got = _through(w.guest, guest, measure) if top else None
            if got is None or got[0] <= top:
                continue

            weights = _Current(got[1])

            def again(measure: netlink_ceiling.Measure = measure, weights: _Current = weights) -> int:
                if (n := _through(w.guest, guest, measure)) is None:
                    raise ProcessLookupError(w.guest)
                weights.weigh = n[1]  # as read with the level: a holder made since weighs too
                return n[0]

            names = (event, unit, what)
            kills += self._contain(sid, w, names, got[0], top, top, again, weights, REFILL_TICKS)
        return kills

    def _enforce(self, sid: str, w: _Watched, usage: int) -> int:
        """Past the memory ceiling: kill until the usage is under the bound."""
        return self._contain(sid, w, ("socket_memory", "sockets", "usage"), usage, ceiling(w.limit),
                             w.limit, lambda: _read_int(w.usage))  # fmt: skip

    def _contain(
        self, sid: str, w: _Watched, names: tuple[str, str, str], level: int, top: int,
        under: int, read: Callable[[], int], weigh: Callable[[int], int] = _sockets,
        refill: int = 0,
    ) -> int:  # fmt: skip
        """:meth:`_kill`, then every process of ``cmds`` if it ran out of victims, or out of
        kills or time on :data:`SPENT_TICKS` enforcements in a row, still over (``refill``: a
        level whose weights are in its own unit, killed in batches; or on ``refill`` in a row
        that killed, a forker refilling what they freed: fewer can be holders that were still
        filling when the first came); the number killed."""
        event = names[0]
        n, level, end, passes = self._kill(sid, w, names, level, top, under, read, weigh, refill > 0)
        last, row = w.spent.get(event, (0, 0))
        # in a row: handed over by the first tick that looked after the last one ended (refill:
        # within REFILL_GAP of it, the time a refill takes to get past again); refill: each
        # pass that killed counts (a pass after the first found the level past again)
        step = passes if refill and n else int(end == "spent")
        row = (row if w.handed <= last + (REFILL_GAP if refill else 1) else 0) + step if step else 0
        w.spent[event] = (self._ticks, row)
        if end == "no_victim" and n:  # its victims' in-flight files are put a jiffy later
            time.sleep(SETTLE_S)
            try:
                if (level := read()) <= under:
                    return n
            except (OSError, ValueError):
                return n  # the sandbox is going
        if end == "no_victim" or (row >= refill if refill else end == "spent" and row >= SPENT_TICKS):
            w.spent[event] = (self._ticks, 0)
            n += self._kill_all(sid, event, names[2], level, top)
        return n

    def _kill_all(self, sid: str, event: str, what: str, level: int, top: int) -> int:
        """SIGKILL to every process of ``cmds`` (cmds_procs.kill_all); the number killed."""
        procs = self._root / sid / "cmds" / "cgroup.procs"
        killed = cmds_procs.kill_all(procs, f"/{CGROUP_PARENT}/{sid}/cmds", time.monotonic() + ENFORCE_S)
        if killed:  # rare (an enforcement in two at most), and the case the operator must see
            log.warning("event=%s_kill_all sandbox=%s killed=%d %s=%d ceiling=%d", event, sid,
                        killed, what, level, top)  # fmt: skip
        return killed

    def _kill(
        self, sid: str, w: _Watched, names: tuple[str, str, str], level: int, top: int,
        under: int, read: Callable[[], int], weigh: Callable[[int], int] = _sockets,
        exact: bool = False,
    ) -> tuple[int, int, str, int]:  # fmt: skip
        """Kill ``cmds``' socket holders, the heaviest first (``weigh``: a pid's weight),
        re-reading the level (``read``) after each exit, until it is at most ``under``, at
        most :data:`MAX_KILLS` or :data:`ENFORCE_S` (a pass's reads too); the number killed,
        the level last read, why it stopped: "under", "no_victim", "spent" (still over), "gone"
        (the cgroup or a victim went: the next tick sees), and the passes that killed. A
        process killed and not gone yet (the wait ran out) is not chosen again. ``exact``: the
        weights are in the level's own unit (TCP sockets, netlink ones, queued bytes), so a
        pass kills at once the heaviest whose weights cover the excess (:func:`batch`) and
        :data:`MAX_KILLS` counts passes: one victim a pass, each waited for and the level read
        again, was slower than a forker refilling what the last one freed (session 26)."""
        event, unit, what = names
        deadline = time.monotonic() + ENFORCE_S
        killed: list[int] = []
        cmds = f"/{CGROUP_PARENT}/{sid}/cmds"
        procs = self._root / sid / "cmds" / "cgroup.procs"
        end, passes = "spent", 0
        while (passes if exact else len(killed)) < MAX_KILLS and time.monotonic() < deadline:
            pinned: dict[int, tuple[int, int]] = {}
            try:
                if not _pin_all(procs, cmds, killed, weigh, deadline, pinned):
                    break  # "spent": the pass's reads took the time
                weights = [(pid, n) for pid, (_, n) in pinned.items()]
                one = choose(weights)
                victims = batch(weights, level - under) if exact else [] if one is None else [one]
                if not victims:
                    msg = f"event={event}_no_victim sandbox=%s {what}=%d ceiling=%d"
                    w.log.warn(msg, sid, level, top)
                    end = "no_victim"
                    break
                passes += 1
                for victim in victims:
                    with contextlib.suppress(ProcessLookupError):  # exited by itself: freed too
                        signal.pidfd_send_signal(pinned[victim][0], signal.SIGKILL)
                        killed.append(victim)
                cmds_procs.wait_all([pinned[v][0] for v in victims], deadline)
            except (OSError, ValueError):
                end = "gone"  # the cgroup is going: the next tick sees
                break
            finally:
                for fd, _ in pinned.values():
                    os.close(fd)
            msg = f"event={event}_kill sandbox=%s pid=%d {unit}=%d {what}=%d ceiling=%d"
            for victim in victims:
                w.log.warn(msg, sid, victim, pinned[victim][1], level, top)
            try:
                level = read()
            except (OSError, ValueError):
                end = "gone"  # the sandbox (its cgroup, its guest) is going
                break
            if level <= under:
                end = "under"
                break
        return len(killed), level, end, passes


def _pin_all(
    procs: Path, cmds: str, skip: list[int], weigh: Callable[[int], int], deadline: float,
    into: dict[int, tuple[int, int]],
) -> bool:  # fmt: skip
    """:func:`_pinned` of every process of ``cmds`` but ``skip``, into ``into``; False if the
    deadline came first (a pass reads every descriptor: processes times RLIMIT_NOFILE, the
    tenant's to make long)."""
    for pid in cmds_procs.pids(procs):
        if time.monotonic() >= deadline:
            return False
        if pid not in skip and (p := _pinned(pid, cmds, weigh)) is not None:
            into[pid] = p
    return True


def _through(pid: int, cgroup: str, read: Callable[[int], _T]) -> _T | None:
    """``read(pid)`` if ``pid`` is (still) a process of the memory cgroup ``cgroup`` (the
    sandbox's own: the guest), pinned by a pidfd around the read; None otherwise."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if not any(
            cmds_procs.in_cgroup(x, cgroup) for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        ):
            return None
        got = read(pid)
        signal.pidfd_send_signal(pidfd, 0)
        return got
    except (OSError, ValueError):
        return None
    finally:
        os.close(pidfd)


async def watch(running: Callable[[], Mapping[str, str]], killed: Callable[[int], None]) -> None:
    """The agent's loop: every :data:`TICK`, the ``running()`` sandboxes (container id → team)
    in one thread hop;
    ``killed(n)`` counts the kills (the metrics counter; called from the workers' threads)."""
    ceiling_ = SocketCeiling(killed=killed)
    if not ceiling_.available:
        return  # socket_memory logged why (v2, or no kmem accounting): nothing is bounded
    try:
        while True:
            await asyncio.sleep(TICK)
            try:
                await asyncio.to_thread(ceiling_.tick, running())  # none: queued ones dropped
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=background_error task=socket_ceiling")
    finally:
        ceiling_.workers.drop(())  # the queued; one running ends within its ENFORCE_S
