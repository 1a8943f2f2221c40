"""Socket buffers of a runc/crun sandbox, bounded per sandbox (cgroup v1).

On cgroup v1 the memory a socket's queues hold (TCP and UDP, IPv4 and IPv6) is not charged to
``memory.limit_in_bytes``: it goes to the memory cgroup's ``memory.kmem.tcp.*`` counter, and only
once that cgroup's ``memory.kmem.tcp.limit_in_bytes`` has been written (the write turns the
accounting on for that cgroup; a socket made before it, or by a process of a cgroup without it,
is never charged to any). Unbounded, only the host-wide ``net.ipv4.tcp_mem`` / ``udp_mem``
stopped a tenant: measured on this host (6.18, session 18), one process in a 256 MiB cgroup
queued 1118 MiB in 300 loopback TCP pairs, filled and never read, and ~286 MiB in 1500 UDP
sockets, its memory cgroup at ~10 MB; at the global limit every TCP socket of the host (other
sandboxes, the agent's link to the control plane, PostgreSQL) is under pressure; with tcp_mem
lifted (below) one sandbox queued 2.2 GiB in 300 pairs. Unix sockets are charged to memory
already (their buffers are ordinary accounted allocations).

So the agent writes :func:`bound` to ``memory.kmem.tcp.limit_in_bytes`` of the sandbox's
memory cgroup (the guest's own sockets) and of its ``cmds`` child (every tenant command's;
cmds_cgroup.py) before any process of the sandbox runs (oci.create), and again on a resize
(cmds_cgroup.resize_memory: a warm-pool claim). A socket is charged to the cgroup of the process
that made it (or accepted it), and the counter is hierarchical: the sandbox's own bound holds
what the guest and ``cmds`` hold together. Past it, a send waits or fails (EAGAIN) and the
receive side drops what it cannot queue (TCP resends it), as under global pressure but for this
sandbox alone.

The bound, :data:`FRACTION` of the sandbox's memory between :data:`FLOOR` and :data:`CEILING`,
is on top of its memory limit (v1 keeps the two apart), so it is kept small:

* one loopback connection moving 1 GiB in a 128 MiB cgroup (Python, alternated runs on this
  host at load 8, MiB/s): no bound 798 1731 1328 777 1382 934; 32 MiB 1476 1347 1021; 16 MiB
  1280 1206 1415; 8 MiB 561 423 562 1512 427 818; 4 MiB 393 337 366. A busy connection's
  queues settle at a few MiB (autotuning goes to tcp_rmem 6 + tcp_wmem 4 MiB), so 16 MiB is the
  floor: a 64-256 MiB sandbox (a web server with a few hundred mostly idle connections: idle
  ones hold nothing) moves a few busy connections at full speed, the rest at what is left;
* an 8 GiB sandbox: 256 MiB, some 30-60 connections with full windows;
* the kernel still charges each socket a packet past a full bound (a received segment on an
  empty queue, a send that found its buffer full; on loopback up to 64 KiB each): 3000 TCP
  sockets filled in a 128 MiB cgroup at an 8 MiB bound held 195 MiB (207 MiB charged), ~66 KiB
  a socket, against ~3.8 KiB of its memory limit each socket costs (file, inode, socket). So a
  sandbox with very many sockets still holds more than its bound (docs/agent.md, "Limits"),
  up to twice it: past that the agent kills the sandbox's socket holders (socket_ceiling.py).
  A smaller MTU and GSO size on the slot's loopback (sandbox root has no CAP_NET_ADMIN to undo
  it) would shrink that: 16 KiB, ~33 KiB a socket; 4 KiB, ~10 KiB; at a cost to loopback
  throughput (one connection, 16 MiB bound: 1.4 GiB/s at 64 KiB, 0.5 at 16, 0.17 at 4). Not done.

The worst host-wide share is :data:`MAX_SHARE` of the host's memory (1/3: 64 MiB sandboxes at
the floor, each at its ceiling, on a host filled at footprints); kernel_limits.lift_socket_memory
keeps the global limits above that.

Where the kernel has no such file (cgroup v2, which charges socket memory to ``memory.max``
already; a v1 kernel without kmem accounting) the agent logs ``event=socket_memory_unbounded``
once and creates sandboxes as before. gVisor sandboxes are left alone: their sockets are
netstack's, in the Sentry's memory, charged to the sandbox's memory limit (checked: the attack
test's 300 TCP pairs in a 256 MiB gVisor sandbox ended in that sandbox's OOM kill, not in
socket memory of the host's). A sandbox re-adopted by a restarted agent
keeps whatever its cgroups have (a bound when this agent made it; none when an older one did).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from warren import footprint
from warren.agent.proc import write_file
from warren.agent.runtime.bundle import CGROUP_PARENT

log = logging.getLogger("warren.agent")

CGROUP_ROOT = Path("/sys/fs/cgroup")
LIMIT = "memory.kmem.tcp.limit_in_bytes"
USAGE = "memory.kmem.tcp.usage_in_bytes"
# The bound is the scheduler's too (a host's capacity counts it: warren/footprint.py): one rule.
PAGE = footprint.PAGE
FRACTION = footprint.SOCKET_FRACTION  # a sixteenth of the sandbox's memory ...
FLOOR = footprint.SOCKET_FLOOR  # ... at least this (64-256 MiB sandboxes) ...
CEILING = footprint.SOCKET_CEILING  # ... at most this (from 4 GiB up)
MIN_SANDBOX = 64 << 20  # sandbox_fs.MIN_MEMORY_MB
# The most socket memory per byte of host memory the sandboxes can hold together: each at its
# ceiling (socket_ceiling.py, past which the agent kills), on a host the scheduler fills to its
# memory at footprints (limit + ceiling); the smallest sandboxes, at the floor, hold the most:
# 32 MiB of a 96 MiB footprint, a third.
_CEILING_AT_FLOOR = footprint.SOCKET_CEILING_FACTOR * FLOOR
MAX_SHARE = max(_CEILING_AT_FLOOR / (MIN_SANDBOX + _CEILING_AT_FLOOR), 2 / (FRACTION + 2))
bound = footprint.socket_bound


_unbounded_logged = False


def available(root: Path = CGROUP_ROOT) -> bool:
    """Whether this host's memory cgroups (v1) can bound socket memory; logged once when not."""
    global _unbounded_logged
    if (root / "memory" / LIMIT).exists():
        return True
    if not _unbounded_logged:
        _unbounded_logged = True
        log.warning(
            "event=socket_memory_unbounded reason=no %s under %s (cgroup v2 charges socket "
            "memory to memory.max; a v1 kernel without kmem accounting has no per-sandbox bound)",
            LIMIT,
            root / "memory",
        )
    return False


def _dirs(sandbox_id: str, root: Path) -> list[Path]:
    """The sandbox's memory cgroup and its ``cmds`` child when there is one."""
    d = root / "memory" / CGROUP_PARENT / sandbox_id
    return [d, *([d / "cmds"] if (d / "cmds").is_dir() else [])]


def limit_new(sandbox_id: str, memory_bytes: int, root: Path = CGROUP_ROOT) -> bool:
    """Bound a new sandbox (before any of its processes runs: sockets made earlier stay
    uncharged); makes its memory cgroup if the runtime has not. False when the kernel cannot."""
    if not available(root):
        return False
    (root / "memory" / CGROUP_PARENT / sandbox_id).mkdir(parents=True, exist_ok=True)
    for d in _dirs(sandbox_id, root):
        write_file(str(d / LIMIT), str(bound(memory_bytes)))
    return True


def resize(sandbox_id: str, new_bytes: int, root: Path = CGROUP_ROOT) -> None:
    """The bound for the sandbox's new memory size. A bound below what its sockets hold now is
    refused by the kernel (EBUSY): then it is set to what they hold, so they get no more (each
    of them drains to its own minimum; the next resize sets the bound)."""
    if not available(root):
        return
    value = bound(new_bytes)
    for d in _dirs(sandbox_id, root):
        try:
            write_file(str(d / LIMIT), str(value))
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            held = -(-int((d / USAGE).read_text()) // PAGE) * PAGE + (1 << 20)
            log.warning("event=socket_memory_busy cgroup=%s bound=%d held=%d", d, value, held)
            write_file(str(d / LIMIT), str(max(value, held)))
