"""What only a gVisor sandbox does: its guest's secret, pause to disk, resume, and forks.

Pause to disk (docs/agent.md, "gVisor"): ``runsc checkpoint`` writes the sandbox's kernel and
memory to ``<sandbox>/checkpoint/`` and ends its processes, so its memory is free on the host;
resume restores them. This runsc version ends the sandbox even when the save *fails*, and a
save fails on any TCP endpoint that is connected or in TIME_WAIT (netstack cannot save one).
So before checkpointing, :func:`checkpointable` reads the sandbox's socket tables
(``/proc/net/tcp`` …, through ``runsc exec``, not through the guest) and, when anything but the
guest's listener is there, the sandbox is paused in memory instead (``paused_state``
``memory``): a pause never loses a sandbox for a cause the agent can see.

A fork (a sandbox created from a memory snapshot) is restored from the snapshot's image into its
own bundle, netns and slot, and its guest, which wakes up with the source's secret in memory, is
given its own at once (``rekey``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from warren.agent import sandbox_fs
from warren.agent.guest_client import GuestClient
from warren.agent.guest_wire import TcpGuest
from warren.agent.record import HostSandbox
from warren.agent.runtime.base import RuntimeError_
from warren.agent.runtime.gvisor import COMPLETE, GUEST_PORT, MEMORY_LIMIT_FILE, GvisorRuntime
from warren.agent.templates import MAPPED_BASE
from warren.errors import InternalError

if TYPE_CHECKING:
    from warren.agent.sandbox_fs import SandboxFs

log = logging.getLogger("warren.agent")

SECRET_FILE = "secret"  # noqa: S105 - in the sandbox's run dir: /run/warren/secret inside
# The guest's arguments on gVisor: its TCP listener and secret, and the memory limit it enforces
# itself (guest_agent/memwatch.py; the file is the runtime's, GvisorRuntime.limit_memory).
GUEST_SECRET_ARGS = [
    "--tcp", str(GUEST_PORT), "--secret-file", f"/run/warren/{SECRET_FILE}",
    "--memory-limit-file", f"/run/warren/{MEMORY_LIMIT_FILE}",
]  # fmt: skip
MAX_TCP_TABLE = 1 << 20
RESUME_READY_TIMEOUT = 30.0
IMAGE_DIR = "memory"  # a memory snapshot's image, next to its layers in the template dir


def new_secret() -> str:
    return secrets.token_hex(32)


def address(sb: HostSandbox) -> TcpGuest:
    return TcpGuest(sb.host_ip, GUEST_PORT, sb.guest_secret.encode())


def open_to_sandbox_root(fs: SandboxFs) -> None:
    """runsc's gofer opens the bundle's bind sources from inside the sandbox's user namespace
    (runc opens them as host root): the disk tmpfs (``shm/``, ``etc/``) and the run dir must be
    passable by sandbox root, as the sandbox dir itself is (0710 root:sandbox-root)."""
    for d in (fs.disk, fs.run):
        os.chown(d, 0, MAPPED_BASE, follow_symlinks=False)
        os.chmod(d, 0o710, follow_symlinks=False)  # noqa: S103 - others: nothing


def write_secret(fs: SandboxFs, secret: str) -> None:
    """Into the run dir (an agent-made tmpfs nothing has run in yet), 0600 sandbox root."""
    path = fs.run / SECRET_FILE
    sandbox_fs.write_private(path, secret)
    os.chown(path, MAPPED_BASE, MAPPED_BASE)


async def checkpointable(rt: GvisorRuntime, sb_id: str) -> str:
    """Empty when a checkpoint can succeed; else why not. This runsc version cannot save a TCP
    endpoint that is connected, in TIME_WAIT, or watched by epoll (a listening asyncio server;
    the guest's own connections too), and a failed save ends the sandbox: so any TCP or UDP
    socket but the guest's listener means no checkpoint. Read with ``runsc exec``, beside the
    guest: asking the guest would itself leave a connection in its epoll set."""
    tables = ["/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"]
    try:
        out = await rt.exec_output(sb_id, ["/bin/cat", *tables], MAX_TCP_TABLE, 10.0)
    except RuntimeError_ as e:
        return f"cannot read its socket tables ({e})"
    busy = []
    for line in out.decode(errors="replace").splitlines():
        cols = line.split()
        if len(cols) > 3 and cols[0].endswith(":") and ":" in cols[1]:
            local_port = int(cols[1].rsplit(":", 1)[-1], 16)
            if not (local_port == GUEST_PORT and cols[3] == "0A"):  # all but the guest's listener
                busy.append(f"{cols[1]}->{cols[2]} state {cols[3]}")
    if busy:
        return f"{len(busy)} socket(s) open ({', '.join(busy[:3])})"
    return ""


async def pause(rt: GvisorRuntime, sb: HostSandbox) -> tuple[str, int]:
    """Checkpoint when it can succeed, else ``runsc pause``; ``(paused_state, image bytes)``.
    No new command reaches the guest meanwhile (``sb.checkpointing``, SandboxManager.guest)."""
    sb.checkpointing = True
    try:
        t0 = time.monotonic()
        why = await checkpointable(rt, sb.id)
        log.debug("event=checkpoint_check sandbox_id=%s ms=%.0f", sb.id, (time.monotonic() - t0) * 1000)
        if why:
            log.info("event=pause_to_memory sandbox_id=%s reason=%r", sb.id, why)
            await rt.pause(sb.id)
            return "memory", 0
        try:
            size = await rt.checkpoint(sb.id)
        except Exception as e:
            raise InternalError(f"checkpoint of {sb.id} failed, the sandbox is lost: {e}") from e
        return "disk", size
    finally:
        sb.checkpointing = False


async def resume(rt: GvisorRuntime, sb: HostSandbox, bundle: Path) -> int:
    """Restore a disk-paused sandbox; its new pid. A restore that fails leaves no process (runsc
    deletes what it began) and the image in place."""
    try:
        return await rt.restore(sb.id, bundle)
    except Exception as e:
        raise InternalError(f"restore of {sb.id} failed: {e}") from e


async def wait_guest(guest: GuestClient, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    await guest.wait_ready(timeout)


# ----------------------------------------------------------------------------- snapshots


async def copy_image_dir(src: Path, dest: Path) -> None:
    """A complete checkpoint image from ``src`` to ``dest``, by hard links: an image is never
    written again, so a snapshot shares its source's and a fork its snapshot's for free."""
    if not (src / COMPLETE).exists():
        raise InternalError(f"no complete memory image at {src.name}")
    await asyncio.to_thread(shutil.rmtree, dest, True)
    await asyncio.to_thread(shutil.copytree, src, dest, copy_function=_link)


def _link(src: str, dst: str) -> None:
    os.link(src, dst)


async def rekey(guest: GuestClient, secret: str, hostname: str) -> None:
    """The restored guest takes the fork's own secret (it woke up with the source's) and its
    ``HOSTNAME`` for new commands (the kernel's hostname stays the source's)."""
    await guest._call({"op": "rekey", "secret": secret, "hostname": hostname})
