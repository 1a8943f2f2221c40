"""The runtime each sandbox runs on, and the steps that differ by it (for SandboxManager).

Which runtime: the create's choice (what the request names, or the host's default; a sandbox
from a memory snapshot is gVisor's, runtime/select.py), and at startup, before re-adoption, what
each record says. What differs: a gVisor sandbox pauses to disk when it can and resumes from
its image, is reached over TCP, and a fork starts by restoring a snapshot's image
(gvisor_ops.py); the others freeze and thaw their cgroup and are reached on a unix socket.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from warren.agent import gvisor_ops, record
from warren.agent.chain import TemplateConfig
from warren.agent.container_ids import ContainerIds
from warren.agent.create import CreateRequest
from warren.agent.guest_client import GuestClient
from warren.agent.guest_wire import GuestAddress
from warren.agent.record import HostSandbox
from warren.agent.runtime import gvisor
from warren.agent.runtime.select import RuntimeSet
from warren.agent.sandbox_fs import SandboxFs
from warren.agent.templates import TemplateStore
from warren.errors import InternalError


class SandboxRuntimes:
    """``runtimes``: those the host offers; ``ids``: the same behind claimed warm-pool members'
    container ids (container_ids.py), which pause and resume go through."""

    def __init__(self, runtimes: RuntimeSet, ids: ContainerIds, templates: TemplateStore) -> None:
        self.runtimes = runtimes
        self.ids = ids
        self.templates = templates

    def assign_recorded(self, sandboxes_dir: Path) -> None:
        """Before re-adoption: each recorded sandbox's runtime, so its state is asked of it."""
        for d in sandboxes_dir.iterdir():
            sb = record.load(d) if d.is_dir() else None
            if sb is not None and sb.runtime in self.runtimes.runtimes:
                self.runtimes.assign(sb.id, sb.runtime)

    def choose(self, req: CreateRequest, runtime: str) -> None:
        """The request's runtime (FAILED_PRECONDITION when not offered), and for a sandbox from a
        host-local snapshot its source's defaults; from a memory snapshot, gVisor and the image
        to restore (gvisor_ops.py)."""
        if req.chain is None and not req.ref.is_minimal:
            snap = self.templates.snapshot_dir(req.ref)
            with contextlib.suppress(OSError, ValueError):
                cfg = json.loads((snap / "config.json").read_text())
                take_snapshot_defaults(req, cfg.get("template_config"))
                if cfg.get("kind") == "memory":
                    runtime, req.restore_image = gvisor.NAME, snap / gvisor_ops.IMAGE_DIR
                    req.source_secret = str(cfg.get("guest_secret", ""))
        req.runtime = self.runtimes.resolve(runtime)
        if req.runtime == gvisor.NAME:
            req.guest_secret = gvisor_ops.new_secret()
        self.runtimes.assign(req.sandbox_id, req.runtime)

    async def restore_fork(self, sb_id: str, bundle: Path, image: Path) -> int:
        """A fork's start: the snapshot's image, hard-linked into the sandbox's own image dir
        (a snapshot deleted or overwritten meanwhile takes nothing away), restored."""
        rt = self.runtimes.gvisor(sb_id)
        if rt is None:
            raise InternalError(f"sandbox {sb_id} is not a gVisor sandbox")
        await gvisor_ops.copy_image_dir(image, rt.image_dir(sb_id))
        return await rt.restore(sb_id, bundle)

    @staticmethod
    def adopted_paused_state(sb: HostSandbox) -> str:
        """A re-adopted paused sandbox's kind of pause: to disk when a crash's checkpoint left
        no process (pid 0, gVisor), else frozen in memory."""
        return "disk" if sb.pid == 0 and sb.runtime == gvisor.NAME else "memory"

    @staticmethod
    def guest_address(sb: HostSandbox, sb_dir: Path) -> GuestAddress:
        """Where its guest listens: the sandbox's unix socket, or for gVisor TCP, secret first."""
        if sb.runtime == gvisor.NAME:
            return gvisor_ops.address(sb)
        return str(SandboxFs(sb_dir).guest_socket)

    async def pause(self, sb: HostSandbox) -> None:
        """Pause a running sandbox (the caller holds its lock): gVisor to disk when it can be
        (its process then gone), else frozen. Sets ``sb.paused_state``."""
        rt = self.runtimes.gvisor(sb.id)
        if rt is not None:
            sb.paused_state, _ = await gvisor_ops.pause(rt, sb)
            if sb.paused_state == "disk":
                sb.pid, sb.guest = 0, None
            return
        try:
            await self.ids.pause(sb.id)
        except Exception as e:
            raise InternalError(f"pause {sb.id}: {e}") from e
        sb.paused_state = "memory"

    async def resume(
        self, sb: HostSandbox, sb_dir: Path, guest_of: Callable[[HostSandbox], GuestClient]
    ) -> None:
        """Resume a paused sandbox (the caller holds its lock): from its image when paused to
        disk, once its guest answers again; else thawed."""
        rt = self.runtimes.gvisor(sb.id)
        if rt is not None and sb.paused_state == "disk":
            sb.pid = await gvisor_ops.resume(rt, sb, sb_dir)
            await guest_of(sb).wait_ready(gvisor_ops.RESUME_READY_TIMEOUT)
            return
        try:
            await self.ids.resume(sb.id)
        except Exception as e:
            raise InternalError(f"resume {sb.id}: {e}") from e


def take_snapshot_defaults(req: CreateRequest, recorded: object) -> None:
    """A host-local snapshot's template defaults (snapshot_export.snapshot_defaults) as the
    request's config; the create's own env wins over the template's, as with a chain."""
    if not isinstance(recorded, dict):
        return  # a snapshot from before its defaults were kept
    req.config = TemplateConfig.from_record(recorded)
    req.env = {**req.config.env, **req.env}
