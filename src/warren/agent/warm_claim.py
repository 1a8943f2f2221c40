"""Claiming a warm-pool member: a running, never-used sandbox becomes the one a create asked for.

A member (warm_pool.py) runs under its own name in ``<data-dir>/warm/<wp-id>/``, with the pool's
default shape (1 vCPU, 512 MB, internet on, no identity). The claim gives it the request's:

* limits: the cgroup's memory (its ``cmds`` child's too) and CPU quota written in place, the disk
  tmpfs remounted to the size a cold create would make (both only ever shrink or grow limits,
  never what is in use: a member holds a few MB);
* identity: hostname (``sethostname`` inside its UTS namespace, and ``/etc/hostname`` and
  ``/etc/hosts`` rewritten in place), the guest's environment (its one ``claim`` operation);
* network: the slot's claim names the sandbox, ``internet=false`` and the team's opened ranges
  are installed on the slot, the sandbox's own egress rules applied as UpdateNetwork would;
* names: the container keeps its id (``container_ids.py`` maps the sandbox to it), the
  directory is renamed to ``sandboxes/<id>/`` (its mounts move with it) and the record and
  bundle are written as a cold create writes them.

The steps are ordered for a crash: until the final record is written, whatever is found at
startup is a pool member or carries a pool record, and both are destroyed, never adopted.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import threading
import time
from pathlib import Path

from warren.agent import record, sandbox_fs
from warren.agent.container_ids import ContainerIds
from warren.agent.create import CreateRequest, SandboxBuilder
from warren.agent.guest_client import GuestClient
from warren.agent.network import NetworkSlots, Slot
from warren.agent.proc import MS_NODEV, MS_NOSUID, mount, write_file
from warren.agent.record import HostSandbox
from warren.agent.runtime.bundle import DEFAULT_PATH
from warren.agent.runtime.cmds_cgroup import resize_memory
from warren.agent.runtime.oci import cgroup_dir
from warren.agent.sandbox_fs import DiskSize, SandboxFs
from warren.aio import cancel_and_wait

log = logging.getLogger("warren.agent")

CLONE_NEWUTS = 0x04000000
MS_REMOUNT = 32
CPU_PERIOD_US = 100_000

_libc = ctypes.CDLL(None, use_errno=True)


def guest_env(req: CreateRequest) -> dict[str, str]:
    """Every process's base environment, exactly as the bundle of a cold create sets it."""
    return {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **req.env, "HOSTNAME": req.sandbox_id}


def set_limits(container_id: str, member: HostSandbox, req: CreateRequest) -> None:
    """The request's memory and CPU quota on the member's cgroups (v1), in place; its commands'
    ``cmds`` cgroup with the memory (runtime/cmds_cgroup.py; pids.max is the agent's, unchanged)."""
    if req.memory_mb != member.memory_mb:
        resize_memory(container_id, member.memory_mb << 20, req.memory_mb << 20)
    if req.vcpus != member.vcpus:
        write_file(str(cgroup_dir("cpu", container_id) / "cpu.cfs_quota_us"), str(req.vcpus * CPU_PERIOD_US))


def resize_disk(fs: SandboxFs, disk: DiskSize) -> None:
    """The disk tmpfs at the request's size (a member's own use is a few inodes)."""
    opts = f"size={disk.mb}m,nr_inodes={disk.inodes},mode=0700"
    mount("", str(fs.disk), "tmpfs", opts, MS_REMOUNT | MS_NOSUID | MS_NODEV)


def rewrite_identity(fs: SandboxFs, sb_id: str) -> None:
    """``/etc/hostname`` and ``/etc/hosts`` in place: the container binds these very inodes."""
    files = sandbox_fs.identity_files(sb_id)
    for name in ("hostname", "hosts"):
        fd = os.open(fs.identity / name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, files[name].encode())
        finally:
            os.close(fd)


def _sethostname_in(pid: int, name: str) -> None:
    own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWUTS) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns uts of {pid}: {os.strerror(err)}")
        try:
            socket.sethostname(name)
        finally:
            # This thread is its own and ends here: even a failed return leaves no other
            # thread of the agent in the sandbox's namespace.
            _libc.setns(own, CLONE_NEWUTS)
    finally:
        os.close(own)
        os.close(target)


async def set_hostname(pid: int, name: str) -> None:
    """``sethostname`` inside the UTS namespace of ``pid``, from a thread of its own (setns
    moves only the calling thread; this one ends right after)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def work() -> None:
        try:
            _sethostname_in(pid, name)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, e)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=work, name="warm-claim-uts", daemon=True).start()
    await done


async def claim(
    *,
    member: HostSandbox,
    warm_dir: Path,
    sandboxes_dir: Path,
    req: CreateRequest,
    runtime: ContainerIds,
    network: NetworkSlots,
    builder: SandboxBuilder,
    frozen: bool,
) -> HostSandbox:
    """The member as sandbox ``req.sandbox_id``: registered nowhere yet (the caller does that).
    On failure the caller destroys what is left, under either name."""
    cid, sb_id = member.id, req.sandbox_id
    steps = _Steps()
    fs = SandboxFs(warm_dir / cid)
    if frozen:
        await runtime.resume(cid)
    steps.mark("thaw")
    # The guest's claim goes out first and is answered (on the other core) while the agent
    # applies the rest; it is awaited before the rename, so a guest that refuses (it ran
    # something: it never should have) still leaves a member, destroyed by the caller.
    guest = asyncio.ensure_future(GuestClient(str(fs.guest_socket)).claim(guest_env(req)))
    # Likewise the hostname, from a thread of its own.
    hostname = asyncio.ensure_future(set_hostname(member.pid, sb_id))
    # Two turns of the loop: the connection is made in the first, the request written in the
    # second (the steps below never yield; without these the two would start only at the end).
    for _ in range(2):
        await asyncio.sleep(0)
    try:
        disk = sandbox_fs.disk_size(req.memory_mb, req.disk_size_mb)
        set_limits(cid, member, req)
        if disk.mb != member.disk_size_mb:
            resize_disk(fs, disk)
        steps.mark("limits")
        rewrite_identity(fs, sb_id)
        steps.mark("identity")
        runtime.alias(sb_id, cid)  # persisted before any rename
        steps.mark("alias")
        slot = Slot(member.slot)
        await network.reassign(slot, sb_id, internet=req.internet, allow=req.allow)
        steps.mark("network")
        await hostname
        steps.mark("hostname_wait")
        await guest
        steps.mark("guest_wait")
    finally:
        await cancel_and_wait(*(f for f in (guest, hostname) if not f.done()))
    final = SandboxFs(sandboxes_dir / sb_id)
    os.rename(fs.root, final.root)  # the pool record inside: destroyed at a restart, never adopted
    steps.mark("rename")
    if req.internet:
        await network.rules.apply(slot, req.egress, final.identity / "resolv.conf", req.tenant)
    lower = [Path(p) for p in member.lower_layers]
    sb = builder._new_record(req, slot, disk, lower, member.base_config)
    sb.pid, sb.runtime = member.pid, req.runtime
    builder._write_bundle(req, final, slot)
    steps.mark("bundle")
    record.save(final.root, sb)
    steps.mark("record")
    log.debug("event=claim_steps sandbox_id=%s %s (ms)", sb_id, steps)
    return sb


class _Steps:
    """Each step's wall time since the previous mark, for the claim's debug line."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._ms: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self._ms.append((name, (now - self._last) * 1000))
        self._last = now

    def __str__(self) -> str:
        return " ".join(f"{name}={ms:.2f}" for name, ms in self._ms)
