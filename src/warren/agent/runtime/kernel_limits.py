"""Host-wide kernel limits one runc/crun sandbox could use up for every other sandbox.

The kernel keeps a few counts for the whole host, or per host uid (its ``user_struct``, not per
user namespace), and every sandbox maps its uids onto the same host range (bundle.py; docs/
security.md, "One uid range for all sandboxes"): session 10 moved the ucount-based ones
(inotify, queues, signals) onto each slot's own namespace owner, but these stay shared. Found in
session 14, from inside one sandbox:

* ``fs.epoll.max_user_watches`` (5.5 M here), per uid: two processes as ``nobody`` holding 2000
  epoll instances over 2000 eventfds each (1.15 GB of their sandbox's memory) used them all up,
  and every other sandbox's ``nobody`` got ENOSPC from ``epoll_ctl``. As root the same reaches
  the guest (PID 1, an epoll loop) of every sandbox on the host (not run: the machine is shared).
* ``fs.pipe-user-pages-soft`` (16384 pages), per uid: 64 pipes grown to 1 MiB left every other
  sandbox's new pipes of that uid at 8 KiB, and F_SETPIPE_SZ refused (EPERM).
* ``fs.file-max`` (2.47 M here), for the host: a sandbox may hold pids.max x RLIMIT_NOFILE
  (1024 x 4096 = 4.2 M) open files, ~0.25 KiB of its memory each; past the table's size every
  process without CAP_SYS_ADMIN on the host (every sandbox, the database, the control plane
  when not root) gets ENFILE. (Not run here to the end: it takes the whole machine's table.)
* ``kernel.pid_max`` (32768 without systemd's default), for the host: 32 sandboxes at their
  pids.max hold every pid (a host with 8+ cores takes that many one-vCPU sandboxes).
* ``kernel.pty.max`` (4096, 1024 of them kept for the host's own devpts), for the host: one
  sandbox as nobody opened 3071 ptys and no other sandbox could open a terminal. Each sandbox's
  devpts now holds at most bundle.DEVPTS_MAX, and the host's count is the kernel's ceiling.

Each of these objects is charged to the memory cgroup of whoever holds it (struct file, epoll
items, pipe buffers, task stacks; ttys on recent kernels), so a sandbox's memory limit bounds
what it can hold and the counts only let one tenant deny the others. The agent lifts them past
what the host's memory could hold (an epoll item or a file is at least 128 bytes; systemd sets
file-max and pid_max the same way), never lowering a value an operator set higher. They are
host-wide: a local user outside any cgroup is then bounded by memory, as for most kernel
objects. (Descriptors in flight over unix sockets are counted per uid against the sender's
RLIMIT_NOFILE, with no setting: left open, docs/security.md.)
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("warren.agent")

EPOLL_WATCHES = "/proc/sys/fs/epoll/max_user_watches"
PIPE_PAGES_SOFT = "/proc/sys/fs/pipe-user-pages-soft"
FILE_MAX = "/proc/sys/fs/file-max"
PID_MAX = "/proc/sys/kernel/pid_max"
PTY_MAX = "/proc/sys/kernel/pty/max"
SMALLEST_OBJECT = 128  # bytes: an epoll item, less than a struct file
PID_MAX_LIMIT = 4194304  # the kernel's ceiling on 64-bit (systemd's default)
PTY_MAX_LIMIT = 1 << 20  # the kernel's ceiling (NR_UNIX98_PTY_MAX)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write(path: str, value: int, was: int) -> bool:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:  # not root (a unit test), or a read-only /proc/sys (in a container)
        log.warning("event=kernel_limit_unchanged path=%s error=%s", path, e)
        return False
    log.warning("event=kernel_limit_lifted path=%s was=%d now=%d", path, was, value)
    return True


def host_memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def wanted(paths: dict[str, str] | None = None) -> dict[str, tuple[str, int]]:
    """What each limit should be at least: name -> (path, value); 0 for the pipe soft limit
    means none."""
    p = {
        "epoll": EPOLL_WATCHES,
        "pipes": PIPE_PAGES_SOFT,
        "files": FILE_MAX,
        "pids": PID_MAX,
        "ptys": PTY_MAX,
        **(paths or {}),
    }
    beyond_memory = host_memory_bytes() // SMALLEST_OBJECT
    return {
        "epoll": (p["epoll"], beyond_memory),
        "pipes": (p["pipes"], 0),
        "files": (p["files"], beyond_memory),
        "pids": (p["pids"], PID_MAX_LIMIT),
        "ptys": (p["ptys"], PTY_MAX_LIMIT),
    }


def lift_shared_kernel_limits(paths: dict[str, str] | None = None) -> list[str]:
    """Raise the limits of the module docstring where they are lower; the paths changed."""
    changed = []
    for name, (path, value) in wanted(paths).items():
        current = _read_int(path)
        if current is None:
            continue
        low = current != 0 if name == "pipes" else current < value
        if low and _write(path, value, current):
            changed.append(path)
    return changed


# Socket memory, in pages (min, pressure, max), for the whole host: past "pressure" every TCP
# socket's buffers shrink, past "max" no socket gets more (only each one's minimum). Each
# runc/crun sandbox's own is bounded (socket_memory.py) but on top of its memory limit, and the
# kernel's defaults (tcp_init_mem, udp_init: 3/64, 1/16, 3/32 and 3/32, 1/8, 3/16 of the memory
# free at boot; here 287889 383855 575778 and 575781 767710 1151562 pages, 24 GiB) were sized
# for the host alone: sandboxes holding their bounds reach them. Sandboxes hold at most
# socket_memory.MAX_SHARE of the host's memory, each at its ceiling (twice its bound, where the
# agent kills) on a host the control plane fills at footprints (limit + ceiling, warren/
# footprint.py; overcommit_memory 1.0): a third, 64 MiB ones at the 16 MiB floor, 7.8 GiB here
# (session 21; a quarter before, sized for the bounds alone). Each limit is lifted to the
# kernel's default share plus that, so the host's own sockets (the agent's link, PostgreSQL) and
# each socket's minimum keep the default room under "pressure" with every sandbox at its
# ceiling: (min, pressure, max) tcp 8.9, 9.3, 10.0 GiB and udp 10.0, 10.8, 12.2 GiB here.
# Lifted only where the bounds are written (a higher global limit without them lets one
# sandbox queue more: 2.2 GiB in 300 TCP pairs). TCP and UDP are charged to one bound per
# sandbox, so either sum is at most the sandboxes' share. gVisor sandboxes hold no host TCP/UDP
# sockets.
TCP_MEM = "/proc/sys/net/ipv4/tcp_mem"
UDP_MEM = "/proc/sys/net/ipv4/udp_mem"
KERNEL_SHARES = {"tcp": (3 / 64, 1 / 16, 3 / 32), "udp": (3 / 32, 1 / 8, 3 / 16)}
PAGE = 4096


def socket_memory_wanted(host_bytes: int, share: float) -> dict[str, tuple[int, int, int]]:
    """Pages (min, pressure, max) each of tcp_mem and udp_mem should be at least, sandboxes
    holding at most ``share`` of the host's memory in sockets (socket_memory.MAX_SHARE)."""
    sandboxes = host_bytes * share
    out = {}
    for name, shares in KERNEL_SHARES.items():
        lo, mid, hi = (int((host_bytes * share + sandboxes) // PAGE) for share in shares)
        out[name] = (lo, mid, hi)
    return out


def lift_socket_memory(share: float, paths: dict[str, str] | None = None) -> list[str]:
    """Raise tcp_mem / udp_mem where lower than :func:`socket_memory_wanted` (each of the three
    values on its own, never one lowered); the paths changed."""
    p = {"tcp": TCP_MEM, "udp": UDP_MEM, **(paths or {})}
    changed = []
    for name, want in socket_memory_wanted(host_memory_bytes(), share).items():
        try:
            with open(p[name]) as f:
                current = tuple(int(v) for v in f.read().split())
        except (OSError, ValueError):
            continue
        if len(current) != 3 or all(c >= w for c, w in zip(current, want, strict=True)):
            continue
        value = " ".join(str(max(c, w)) for c, w in zip(current, want, strict=True))
        try:
            with open(p[name], "w") as f:
                f.write(value)
        except OSError as e:
            log.warning("event=kernel_limit_unchanged path=%s error=%s", p[name], e)
            continue
        was = " ".join(map(str, current))
        log.warning("event=kernel_limit_lifted path=%s was=%r now=%r", p[name], was, value)
        changed.append(p[name])
    return changed


# Per sandbox, in its own IPC namespace (set by the runtime from the bundle's sysctls; /proc/sys
# is read-only inside and no sandbox process may make a new IPC namespace). SysV message queues
# and semaphore sets are kernel memory charged to the sandbox that no process holds: no OOM kill
# frees them, the disk size does not bound them, and root inside (no CAP_IPC_OWNER) cannot remove
# nobody's. The namespace's defaults allowed ~500 MiB of queues (msgmni 32000 x msgmnb 16 KiB;
# a queue of empty messages costs 64 bytes a message, 1 MiB) and 2 MiB a semaphore set (32000
# semaphores of 64 bytes) x 32000 sets (session 17). Bounds below, measured on 6.18: queues at
# most 8 x 8192 empty messages x 64 bytes = 4 MiB; semaphores 4096 x 64 bytes plus 128 sets'
# headers, < 0.5 MiB. Still enough for what uses them: a Linux-default-sized message (8192),
# PostgreSQL built with SysV semaphores (17 per 16 backends: ~3800 connections). SysV shared
# memory is left at the defaults: with shm_rmid_forced a segment goes with its last attached
# process (or its creator, if never attached), so its pages are process memory the OOM killer
# frees, as for an anonymous shared mapping. runsc ignores these sysctls: in a gVisor sandbox the
# guest removes the segments nothing holds itself (guest_agent/shm_orphans.py).
MSGMNI = 8  # queues
MSGMNB = 8192  # bytes, and messages, a queue may hold
MSGMAX = 8192  # bytes a message (the kernel's default)
SEM = (250, 4096, 500, 128)  # per set, in all, per semop call, sets


def ipc_namespace_sysctls() -> dict[str, str]:
    """The sandbox's IPC namespace limits (OCI ``linux.sysctl``)."""
    return {
        "kernel.shm_rmid_forced": "1",
        "kernel.msgmni": str(MSGMNI),
        "kernel.msgmnb": str(MSGMNB),
        "kernel.msgmax": str(MSGMAX),
        "kernel.sem": " ".join(str(v) for v in SEM),
    }
