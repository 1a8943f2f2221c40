"""The guest's OOM standing in a runc/crun sandbox: its own score 0, every other process >= 1000.

The guest (the container's init) starts each command at ``oom_score_adj`` 1000, so that the
sandbox's memory cgroup takes a tenant process before the guest, whose death is the sandbox's
(guest_agent/process.py, ``OomScore``). But a process may lower its own score down to its
``oom_score_adj_min``, which it inherits at fork and which only a writer holding
CAP_SYS_RESOURCE over the host sets. The runtime's write left the guest's floor at 0: any tenant
process, ``nobody`` included, could lower itself to 0, the guest's own score, and then the guest
(the largest of many small processes) was the victim (session 16,
test_attack_session16_guest_oom.py).

So the agent writes the guest's score twice: ``oom_score_adj`` 1000 (a privileged write sets
the floor with the score), then the legacy ``oom_adj`` 0, which sets the score alone and leaves
the floor at 1000. Every process the guest forks inherits that floor; the guest keeps 0. Both
writes come before the create returns, so before the guest forks anything of a tenant's.

An agent without CAP_SYS_RESOURCE (a container without it, as on the reference test machines)
can do neither write's privileged part: it leaves the guest as the runtime made it, and says so
once (event=guest_oom_floor_unavailable).

Since session 17 the tenant's processes run in a cgroup of their own below the sandbox's
(cmds_cgroup.py), whose OOM killer never sees the guest: that holds without the capability.
The floor is kept where it can be set: it still decides the sandbox's own OOM, which only
memory charged to the guest's cgroup beyond its reserve reaches (what the guest writes for a
client, a file upload onto the sandbox's disk tmpfs above all).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger("warren.agent.runtime")

CAP_SYS_RESOURCE = 24
CHILD_FLOOR = b"1000"  # the floor every process of the sandbox but the guest inherits
GUEST_LEGACY_ADJ = b"0"  # oom_adj 0 is oom_score_adj 0 (the legacy scale is -17..15)
_able: bool | None = None


def able(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (effective), which both writes need."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def pin(pid: int) -> None:
    """Give the container's init ``pid`` (a host pid) score 0 over a floor of 1000. An init that
    has already exited is left (the create's guest wait reports it)."""
    global _able
    if _able is None:
        _able = able()
        if not _able:
            log.warning(
                "event=guest_oom_floor_unavailable reason=no_cap_sys_resource detail=tenant "
                "processes may lower their OOM score to the guest's (their cmds cgroup still "
                "keeps them from the guest)"
            )
    if not _able:
        return
    with contextlib.suppress(ProcessLookupError, FileNotFoundError):
        _write(pid, "oom_score_adj", CHILD_FLOOR)
        _write(pid, "oom_adj", GUEST_LEGACY_ADJ)


def _write(pid: int, name: str, value: bytes) -> None:
    with open(f"/proc/{pid}/{name}", "wb", buffering=0) as f:
        f.write(value)
