"""Removing what one sandbox left on the host: its container, processes, mounts, slot, files.

Used by destroy, by re-adoption for a crash's leftovers, and by nothing else: every step is
tried, then whatever failed is reported together, so one stuck mount does not keep the network
slot (or the directory) from being freed.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from pathlib import Path

from warren.agent import record
from warren.agent.network import NetworkSlots, Slot
from warren.agent.proc import mounts_under, umount
from warren.agent.runtime.base import Runtime
from warren.agent.runtime.oci import reap_orphans
from warren.agent.trees import remove_tree
from warren.errors import InternalError

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> None:
    """Make the agent the subreaper of its descendants (at startup; :meth:`Teardown.reap_zombies`
    reaps them)."""
    # Container inits are re-parented to the agent when runc exits, so the agent reaps them
    # (some hosts' PID 1 does not). They survive the agent's death: nothing kills them with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Teardown:
    def __init__(self, sandboxes_dir: Path, runtime: Runtime, network: NetworkSlots) -> None:
        self.sandboxes_dir = sandboxes_dir
        self.runtime = runtime
        self.network = network
        # Container inits the agent must reap (it is their subreaper; see SandboxManager.start).
        self.zombies: set[int] = set()

    async def cleanup(self, sb_id: str, *, slot: int | None, pid: int) -> None:
        """Remove everything of one sandbox; try every step, then report what failed."""
        errors: list[str] = []
        try:
            await self.runtime.destroy(sb_id)
        except Exception as e:
            errors.append(f"runtime: {e}")
        if pid:
            self.track(pid)
        d = self.sandboxes_dir / sb_id
        errors += self._unmount_all(d)
        if slot is not None:
            try:
                await self.network.release(Slot(slot))
            except Exception as e:
                errors.append(f"network: {e}")
        if not mounts_under(d):
            await asyncio.to_thread(remove_tree, d, ignore_errors=True)  # any depth: trees.py
            if d.exists():
                errors.append(f"cannot remove {d}")
        if errors:
            raise InternalError(f"destroy {sb_id}: " + "; ".join(errors))

    @staticmethod
    def _unmount_all(d: Path) -> list[str]:
        errors = []
        for mp in mounts_under(d):
            try:
                umount(mp)
            except OSError:
                # Busy (a process still holds it): detach now, the kernel frees it later.
                try:
                    umount(mp, lazy=True)
                except OSError as e:
                    errors.append(str(e))
        return errors

    def leftover_slot(self, sb_id: str) -> int | None:
        """The slot a leftover's record names, if its claim still names this sandbox."""
        slot = record.recorded_slot(self.sandboxes_dir / sb_id)
        if slot is None or not self.network.held_by(slot, sb_id):
            return None
        return slot

    def track(self, pid: int) -> None:
        """A container init that was killed: reap it now, or in a later pass if not dead yet."""
        self.zombies.add(pid)
        self.reap_pid(pid)

    def reap_pid(self, pid: int) -> None:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            self.zombies.discard(pid)  # not our child (adopted after a restart) or reaped
            return
        if done:
            self.zombies.discard(pid)

    async def reap_zombies(self) -> None:
        for pid in list(self.zombies):
            self.reap_pid(pid)
        reap_orphans()  # the runtimes' own leftovers (oci.ORPHAN_NAMES)
