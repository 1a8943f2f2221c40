"""A ceiling on a runc/crun sandbox's netlink sockets: host memory no cgroup is charged for (v1).

A netlink socket's ``struct sock`` (1096 bytes) comes from ``kmalloc-2k``, a cache no memory
cgroup is charged for: its ``/proc/net/protocols`` row says ``slab no`` (TCP, UDP and unix
sockets come from caches of their own, charged). Its inode, file and dentry are charged (~1.3-1.7
KiB), so a sandbox filling its memory with netlink sockets holds ~1.2x its limit more outside
it: 24 553 sockets of ``nobody`` in a 64 MiB runc sandbox held +47 MiB of ``kmalloc-2k`` while
its cgroup was charged +40 MiB (session 21). Unbound sockets are not in ``/proc/net/netlink``
(only the hash table's are), but every one is counted in its namespace's ``/proc/net/protocols``
``sockets`` column. Every protocol of ``slab no`` is counted alike (``PACKET`` too, which needs
CAP_NET_RAW in the sandbox's namespace): the same kmalloc, the same hole.

Their receive queues too, a far larger hole: a reply the kernel sends a netlink socket (an
``RTM_GETLINK`` of ``lo``, a few KiB, for a 32-byte request) is an skb no cgroup is charged for,
kept until read, up to the socket's ``SO_RCVBUF`` (``net.core.rmem_max`` doubled: 8 MiB a
socket on this host, 416 KiB at the kernel's default). 20 sockets of ``nobody`` held 160 MiB of
unreclaimable slab outside a 64 MiB sandbox charged +3.8 MiB, for good (session 21). Only a
bound socket is sent replies (one that sent or connected is), and every bound one is a line of
``/proc/net/netlink`` with its ``Rmem``: their sum against :func:`queue_ceiling`.

The socket watchdog (socket_ceiling.py) reads its namespace's ``sockets: used`` every tick
anyway; the count can only be past :func:`uncharged_ceiling` when that is, so the protocols
file (~2 KiB) is read only then (:func:`count`). The netlink table has no such gate (a few
sockets hold GiBs): it is read every :data:`QUEUE_EVERY` ticks per sandbox (~30 us). The kernel
walks every namespace's netlink sockets for that read, so its cost grows with the host's total,
which tenants set (measured: 0.02 ms a read alone, 0.5 ms with 10 000 bound sockets in other
namespaces; 1024 in each of 100 sandboxes, ~5 ms a read, 50 reads a tick): the reads of
one tick stop at :data:`QUEUE_BUDGET_S` (at least one), and the rest come in the next ticks,
so the watchdog's CPU stays bounded and a sandbox's read comes later instead. Past a ceiling
the ``cmds`` processes holding the most are killed (:func:`weigh`: a descriptor's protocol is
sockfs' own ``system.sockprotoname`` xattr; :func:`weigh_queued`: the bytes queued in its
descriptors' sockets) with the watchdog's pinned-pidfd kill steps, until the level is back
under.

A process fills a socket's queue to its 8 MiB in ~30 ms (~300 MiB/s a core), so the watchdog
kills on these two levels in batches (the weights are in the level's own unit): all the
heaviest holders whose weights cover the excess at once, then one read. One holder a pass, each
waited for and everything read again (~50-200 ms a kill), was slower than a forker replacing
each holder killed: 60 children of 8 MiB held 330-480 MiB outside a 64 MiB sandbox, past
64 MiB for 3-5 s an exec, until the second enforcement killed all of ``cmds`` (session 26). The
table is now read every tick (the same budget), and the fourth pass that kills, each finding
the level past again (in one enforcement, or each within 2 s of the last), kills all of
``cmds`` (socket_ceiling.REFILL_TICKS).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Container

from warren.agent.runtime import cmds_procs
from warren.guest.guest_agent.kernfs import read_small

FLOOR = 1024  # such sockets any bounded sandbox may hold (~2 MiB uncharged)
UNIT = 64 << 10  # bytes of the sandbox's memory per socket past the floor (~3% of it uncharged)
QUEUE_FLOOR = 4 << 20  # bytes queued in a sandbox's netlink sockets it may hold
QUEUE_SHARE = 32  # ... or its memory / 32, the more
QUEUE_EVERY = 1  # ticks between two reads of a sandbox's netlink table (0.5 s), at the least
QUEUE_BUDGET_S = 0.025  # of one tick (0.5 s) for those reads, all sandboxes together
RMEM, INODE = 4, 9  # /proc/net/netlink columns: sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
PROTOCOLS_MAX = 16 << 10  # /proc/net/protocols is ~2.4 KiB (28 rows on 6.18)
# The table read at most: ~100 bytes a line, past 40 000 bound sockets (the count ceiling's kill
# comes for those; what is cut off here is not summed).
TABLE_MAX = 4 << 20
XATTR = "system.sockprotoname"


def uncharged_ceiling(memory: int) -> int:
    """The slab-less sockets a sandbox's namespace may hold: one per 64 KiB of its memory, at
    least 1024 (4096 for 256 MiB). A process uses 1-3 (``ip``, getaddrinfo, a resolver's
    route watch), so hundreds of processes stay under; at the ceiling ~2 KiB each no cgroup
    is charged for is ~3% of the sandbox's memory (2 MiB at the floor)."""
    return max(FLOOR, memory // UNIT)


def queue_ceiling(memory: int) -> int:
    """The bytes a sandbox's netlink sockets may hold queued: its memory / 32, at least 4 MiB
    (8 MiB for 256 MiB). A reply or a dump's batch is a few KiB to 32 KiB, read at once; a
    route listener that lags holds its queue's default (208 KiB) at most."""
    return max(QUEUE_FLOOR, memory // QUEUE_SHARE)


def parse(text: bytes) -> tuple[int, frozenset[str]]:
    """The sockets of every ``slab no`` protocol of /proc/net/protocols text, and their names
    (as ``system.sockprotoname`` gives them)."""
    n, names = 0, set()
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    try:
        sockets, slab = head.index(b"sockets"), head.index(b"slab")
    except ValueError:
        return 0, frozenset()
    for line in lines[1:]:
        f = line.split()
        if len(f) > slab and f[slab] == b"no":
            n += int(f[sockets])
            names.add(f[0].decode())
    return n, frozenset(names)


def count(pid: int) -> tuple[int, frozenset[str]]:
    """:func:`parse` of ``pid``'s network namespace."""
    return parse(read_small(f"/proc/{pid}/net/protocols", PROTOCOLS_MAX))


def weigh(pid: int, names: Container[str]) -> int:
    """Socket descriptors of ``pid`` whose protocol is one of ``names``. Only link targets and
    sockfs' xattr are read: the xattr follows the descriptor to its file, which can only be
    a socket, a tenant's file on a local filesystem (the sandbox mounts nothing), or gone."""
    n = 0
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        path = f"{base}/{fd}"
        with contextlib.suppress(OSError):
            if os.readlink(path).startswith("socket:[") and _name(os.getxattr(path, XATTR)) in names:
                n += 1
    return n


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def queues(text: bytes) -> dict[int, int]:
    """Socket inode -> bytes in its receive queue (``Rmem``: the skbs' truesize), of the sockets
    of /proc/net/netlink text with something queued."""
    out: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) > INODE and f[RMEM] != b"0":
            out[int(f[INODE])] = int(f[RMEM])
    return out


def _table(pid: int) -> bytes:
    """``pid``'s namespace's /proc/net/netlink: a line per bound socket (a socket that sent or
    connected is bound: only those are sent replies), at most the count ceiling's."""
    with open(f"/proc/{pid}/net/netlink", "rb") as f:
        text = f.read(TABLE_MAX)
    return text if len(text) < TABLE_MAX else text[: text.rfind(b"\n") + 1]  # whole lines only


def queued(pid: int) -> int:
    """Bytes queued in the netlink sockets of ``pid``'s namespace (the tick's read)."""
    return sum(queues(_table(pid)).values())


def weigh_queued(pid: int, queued: dict[int, int]) -> int:
    """Bytes of ``queued`` (inode -> bytes) in the socket descriptors of ``pid``."""
    return sum(queued.get(inode, 0) for inode in cmds_procs.socket_inodes(pid))


Measure = Callable[[int], tuple[int, Callable[[int], int]]]


def sockets(pid: int) -> tuple[int, Callable[[int], int]]:
    """The slab-less sockets of ``pid``'s namespace, and a process's weight: its such sockets."""
    n, names = count(pid)
    return n, functools.partial(weigh, names=names)


def queued_bytes(pid: int) -> tuple[int, Callable[[int], int]]:
    """The bytes queued in ``pid``'s namespace's netlink sockets, and a process's weight: the
    bytes in its descriptors' queues (as they were read)."""
    q = queues(_table(pid))
    return sum(q.values()), functools.partial(weigh_queued, queued=q)


# (event, unit, what, measure): the watchdog's two netlink levels, with their ceilings' order
LEVELS: tuple[tuple[str, str, str, Measure], ...] = (
    ("socket_netlink", "netlink", "sockets", sockets),
    ("socket_netlink_queue", "queued", "bytes", queued_bytes),
)
