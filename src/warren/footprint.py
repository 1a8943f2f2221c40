"""A sandbox's host memory footprint: its memory limit plus what it can hold outside it.

The scheduler counts a host's sandboxes against the memory it reported (docs/operations.md,
"Host capacity"). Counting each at its limit (``memory_mb``) under-counted: a sandbox can hold
host memory its memory cgroup's limit does not bound (session 21), so a host filled to its
memory could be pushed past its RAM by its tenants together, and the host's OOM killer then
takes a process of any tenant. What each runtime adds:

* runc / crun (cgroup v1): socket buffers, charged to ``memory.kmem.tcp``, not to the limit.
  The agent bounds them at :func:`socket_bound` (a sixteenth of the memory, 16-256 MiB) and
  kills the sandbox's socket holders past twice that (agent/runtime/socket_memory.py,
  socket_ceiling.py): up to :data:`SOCKET_CEILING_FACTOR` x the bound outside the limit. On
  cgroup v2 socket memory is inside ``memory.max``; the CP does not know a host's cgroup version,
  so it counts the v1 share everywhere (a v2 host is then under-filled by at most that share).
* gVisor: the host cgroup's limit is the tenant's plus :data:`GVISOR_HEADROOM` for the Sentry
  and the gofer (agent/runtime/gvisor.py); its sockets are netstack's, inside that limit.

One rule, here: the agent takes its numbers from this module (socket_memory, socket_ceiling,
gvisor), and the SQL copy (``warren_sandbox_footprint``, migration 0021) is checked against
:func:`footprint_mb` for many sizes (tests/unit/cp/hosts/test_footprint_sql.py). This module
imports nothing of Warren's (an import-linter contract): the agent and the control plane both
import it.
"""

from __future__ import annotations

MIB = 1 << 20
PAGE = 4096
SOCKET_FRACTION = 16  # a sixteenth of the sandbox's memory ...
SOCKET_FLOOR = 16 * MIB  # ... at least this ...
SOCKET_CEILING = 256 * MIB  # ... at most this (from 4 GiB up)
SOCKET_CEILING_FACTOR = 2  # the watchdog kills past twice the bound
GVISOR_HEADROOM = 96 * MIB
GVISOR = "gvisor"


def socket_bound(memory_bytes: int) -> int:
    """The socket memory (bytes, whole pages) a runc/crun sandbox of ``memory_bytes`` may hold."""
    return min(SOCKET_CEILING, max(SOCKET_FLOOR, memory_bytes // SOCKET_FRACTION)) // PAGE * PAGE


def outside_mb(memory_mb: int, runtime: str) -> int:
    """What a sandbox of ``memory_mb`` on ``runtime`` can hold outside its memory limit, in MiB
    rounded up. Any runtime but gVisor (an unknown one too) takes runc's rule."""
    extra = GVISOR_HEADROOM if runtime == GVISOR else SOCKET_CEILING_FACTOR * socket_bound(memory_mb * MIB)
    return -(-extra // MIB)


def footprint_mb(memory_mb: int, runtime: str) -> int:
    """The host memory (MiB) a sandbox of ``memory_mb`` on ``runtime`` can take at most."""
    return memory_mb + outside_mb(memory_mb, runtime)
