"""``cmds``: the child cgroup every tenant command of a runc/crun sandbox runs in (cgroup v1).

The guest (the container's init) is the sandbox's only way in, and it shared the sandbox's
memory and pids cgroups with everything it started. Without CAP_SYS_RESOURCE the agent cannot
give it an OOM floor (guest_oom.py), so ``nobody`` could lower its own score to the guest's and
have the guest killed, and two users together could hold every one of ``pids.max`` (session 16,
docs/security.md §12). So the tenant's processes get a cgroup of their own below the sandbox's,
in the memory and pids hierarchies, with the sandbox's limits less the guest's reserve:

* memory: :data:`MEMORY_RESERVE` (24 MiB, never more than a quarter of the sandbox). The guest
  is one Python process: 3 MiB of anonymous memory and 3.5-5 MiB charged to its cgroup idle
  (runc and crun, 128 and 512 MiB sandboxes); the rest is room for what it buffers for clients
  (output rings, 32 terminals' 64 KiB scrollback, watch events, socket buffers). When ``cmds``
  reaches its own limit the OOM killer chooses inside ``cmds``: never the guest.
* pids: :data:`PIDS_RESERVE` (16). The guest is single-threaded; it forks one command at a time
  (each moves itself into ``cmds`` before its exec) and a few file-operation children.

A command enters ``cmds`` by itself: the agent opens ``cmds/cgroup.procs`` of both hierarchies
as host root and the runtime passes the descriptors to the guest (``--preserve-fds``,
:data:`GUEST_FDS`); the guest's forked child writes "0" through them before it execs and
closes them (guest_agent/process.py). Cgroup v1 checks such a write against the credentials
the file was opened with (host root), so a process in the sandbox's user namespace may write
through the descriptor, while reopening it (``/proc/1/fd/N``, its only way to reach it) is
refused: the file is host root's 0644 (test_attack_session17_guest_cgroup.py). The pid written
is resolved in the writer's pid namespace: the guest's child names only itself.

The agent makes ``cmds`` before the container (its ``cgroup.procs`` must exist to be opened):
runc and crun take the sandbox's cgroup as they find it and write its limits; a destroy removes
``cmds`` first (oci.remove_cgroups). Paused sandboxes are frozen in the freezer hierarchy,
which ``cmds`` is not in; a re-adopted sandbox keeps both (its guest holds its descriptors).
No ``memory.move_charge_at_immigrate``: this kernel refuses it (EINVAL, deprecated), and a child
moves before it touches more than a few of the guest's pages, which its exec frees.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from warren.agent.proc import mount, umount, write_file
from warren.agent.runtime import socket_memory
from warren.agent.runtime.bundle import CGROUP_PARENT

CGROUP_ROOT = Path("/sys/fs/cgroup")
NAME = "cmds"
HIERARCHIES = ("memory", "pids")  # the order of the descriptors the guest gets
GUEST_FDS = (3, 4)  # where the runtime puts them in the guest (--preserve-fds 2)
MEMORY_RESERVE = 24 << 20
PIDS_RESERVE = 16
_MEM, _MEMSW = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"


def sandbox_dir(controller: str, sandbox_id: str) -> Path:
    return CGROUP_ROOT / controller / CGROUP_PARENT / sandbox_id


def cmds_dir(controller: str, sandbox_id: str) -> Path:
    return sandbox_dir(controller, sandbox_id) / NAME


def memory_limit(sandbox_bytes: int) -> int:
    return sandbox_bytes - min(MEMORY_RESERVE, sandbox_bytes // 4)


def pids_limit(sandbox_pids: int) -> int:
    return max(1, sandbox_pids - min(PIDS_RESERVE, sandbox_pids // 4))


def procs_files(sandbox_id: str) -> list[str]:
    """The ``cgroup.procs`` of ``cmds`` in :data:`HIERARCHIES` order (the guest's fds 3, 4)."""
    return [str(cmds_dir(c, sandbox_id) / "cgroup.procs") for c in HIERARCHIES]


def prepare(sandbox_id: str, memory_bytes: int, pids: int) -> None:
    """Make ``cmds`` (and the sandbox's own cgroup, which the runtime then takes as it finds it)
    with the limits for a sandbox of ``memory_bytes`` and ``pids``."""
    for c in HIERARCHIES:
        cmds_dir(c, sandbox_id).mkdir(parents=True, exist_ok=True)
    # From no limit: memory first, then memory+swap (never below it).
    set_memory(cmds_dir("memory", sandbox_id), memory_limit(memory_bytes), grow=False)
    write_file(str(cmds_dir("pids", sandbox_id) / "pids.max"), str(pids_limit(pids)))


def set_memory(d: Path, limit: int, grow: bool) -> None:
    """``d``'s memory limit (and memory+swap, which may never be below it: raised first when
    growing, lowered last when shrinking)."""
    files = [_MEM]
    if (d / _MEMSW).exists():
        files = [_MEMSW, _MEM] if grow else [_MEM, _MEMSW]
    for f in files:
        write_file(str(d / f), str(limit))


def resize_memory(sandbox_id: str, old_bytes: int, new_bytes: int) -> None:
    """A running sandbox's memory limit, ``cmds`` with it: growing, the sandbox first, then
    ``cmds``; shrinking, ``cmds`` first (its tenant never holds more than the new room).
    A sandbox without ``cmds`` (made before it existed) has only its own limit changed. The
    socket memory bound follows the size (socket_memory.py)."""
    grow = new_bytes > old_bytes
    parent, child = sandbox_dir("memory", sandbox_id), cmds_dir("memory", sandbox_id)
    steps = [(parent, new_bytes), (child, memory_limit(new_bytes))]
    for d, limit in steps if grow else reversed(steps):
        if d is child and not d.is_dir():
            continue
        set_memory(d, limit, grow)
    socket_memory.resize(sandbox_id, new_bytes)


def remove(sandbox_id: str, controller: str) -> None:
    """Remove ``cmds`` of one hierarchy, killing what is left in it (a destroy: the runtime has
    ended the container; what remains is exiting). Missing is fine; busy raises OSError."""
    d = cmds_dir(controller, sandbox_id)
    try:
        os.rmdir(d)
    except FileNotFoundError:
        return
    except OSError:
        with contextlib.suppress(OSError):
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        raise


# Moving a process between cgroups takes the kernel's cgroup_threadgroup_rwsem for writing,
# which in its default mode waits an RCU grace period when no move happened just before: a
# command's move into ``cmds`` (two hierarchies) cost its first exec ~5-12 ms here (a claimed
# warm sandbox's first exec 7.6 -> 19.9 ms p50, bench/warm_pool_agent.py). ``favordynmods``
# keeps that lock in the mode that makes moves cheap, at a small cost to every fork and exit.
# The flag is the host's (cgroup2's root, whatever hierarchy is in use; until reboot) and any
# cgroup2 mount may set it: the agent sets it once at start.
_FAVOR = "favordynmods"


def favor_dynamic_moves(scratch: Path) -> tuple[str, str]:
    """Set the kernel's ``favordynmods`` (above): ("on" | "already" | "unavailable", why not).
    Unavailable, the moves stay correct, only slower."""
    if _favored():
        return "already", ""
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        mount("none", str(scratch), "cgroup2", _FAVOR)
    except OSError as e:
        return "unavailable", str(e)
    umount(str(scratch))
    with contextlib.suppress(OSError):
        scratch.rmdir()
    return ("on", "") if _favored() else ("unavailable", "the kernel ignored the option")


def _favored() -> bool:
    """Whether a cgroup2 mount shows the option (it is its root's, so every mount shows it)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            post = line.partition(" - ")[2]
            if post.startswith("cgroup2 ") and _FAVOR in post.split()[-1].split(","):
                return True
    return False
