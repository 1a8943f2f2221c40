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

The socket watchdog (socket_ceiling.py) reads its namespace's ``sockets: used`` every tick
anyway; this count can only be past :func:`uncharged_ceiling` when that is, so the protocols
file (~2 KiB) is read only then (:func:`count`): no extra read for a sandbox under it. Past the
ceiling the ``cmds`` processes holding the most such sockets are killed (:func:`weigh`: a
socket descriptor's protocol is its ``system.sockprotoname`` xattr, sockfs's own), with the
watchdog's pinned-pidfd kill steps, until the count is back under.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Container

from warren.guest.guest_agent.kernfs import read_small

FLOOR = 1024  # such sockets any bounded sandbox may hold (~2 MiB uncharged)
UNIT = 64 << 10  # bytes of the sandbox's memory per socket past the floor (~3% of it uncharged)
PROTOCOLS_MAX = 16 << 10  # /proc/net/protocols is ~2.4 KiB (28 rows on 6.18)
XATTR = "system.sockprotoname"


def uncharged_ceiling(memory: int) -> int:
    """The slab-less sockets a sandbox's namespace may hold: one per 64 KiB of its memory, at
    least 1024 (4096 for 256 MiB). A process uses 1-3 (``ip``, getaddrinfo, a resolver's
    route watch), so hundreds of processes stay under; at the ceiling ~2 KiB each no cgroup
    is charged for is ~3% of the sandbox's memory (2 MiB at the floor)."""
    return max(FLOOR, memory // UNIT)


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
