"""Removing what one sandbox left on the host: its container, processes, mounts, slot, files.

Used by destroy, by re-adoption for a crash's leftovers, and by nothing else: every step is
tried, then whatever failed is reported together, so one stuck mount does not keep the network
slot (or the directory) from being freed.

Except when the container itself may still live (session 17). A slot's index is also the
sandbox's host uid range (templates.uid_base) and its namespace owner's uid (slot_userns.py):
freed while a process of the old container lives (the runtime's delete failed, or its cgroup
would not empty: a process in D state), the next sandbox got the same host uids and address
beside it. Such a slot is *quarantined*: kept claimed, the sandbox's directory (its record)
kept, until :meth:`Teardown.sweep` (every ``WARREN_AGENT_QUARANTINE_SWEEP_S``, 10 s) or a
repeated destroy retries the runtime, kills by cgroup, and finds nothing of it left.

Such a destroy succeeds for its caller (session 18; it answered INTERNAL before). What the
control plane accounts for a sandbox (its team's quotas, the host's vCPUs, memory and disk) is
its record's, and the slot is the agent's alone: the sandbox has left the agent's list, so the
CP's monitor marked the record ``stopped`` at its next pass anyway, and an INTERNAL only gave
the owner a 502 and a record that lingered until then. The agent holds the slot back and says
so (``event=slot_quarantined``, ``warren_agent_sandboxes{state="quarantined"}``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from warren.agent import record
from warren.agent.network import NetworkSlots, Slot
from warren.agent.proc import mounts_under, umount
from warren.agent.runtime.base import ContainerStatus, Runtime
from warren.agent.runtime.oci import CONTROLLERS, cgroup_dir, reap_orphans, remove_cgroups
from warren.agent.trees import remove_tree
from warren.errors import InternalError

log = logging.getLogger("warren.agent")

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A sandbox whose teardown left something alive, and the slot it keeps."""

    slot: int
    pid: int
    reason: str  # what its last teardown could not do


def set_subreaper() -> None:
    """Make the agent the subreaper of its descendants (at startup; :meth:`Teardown.reap_zombies`
    reaps them)."""
    # Container inits are re-parented to the agent when runc exits, so the agent reaps them
    # (some hosts' PID 1 does not). They survive the agent's death: nothing kills them with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Teardown:
    def __init__(
        self, sandboxes_dir: Path, runtime: Runtime, network: NetworkSlots,
        container_id: Callable[[str], str] = str,
    ) -> None:  # fmt: skip
        """``container_id``: the name a sandbox's cgroups carry (a claimed pool member keeps its
        own, container_ids.py), read before the runtime's destroy forgets it."""
        self.sandboxes_dir = sandboxes_dir
        self.runtime = runtime
        self.network = network
        self._container_id = container_id
        # Container inits the agent must reap (it is their subreaper; see SandboxManager.start).
        self.zombies: set[int] = set()
        # Sandboxes whose slot is kept because something of them may live (module docstring).
        self.quarantined: dict[str, Quarantined] = {}
        # Those whose quarantine ended: a destroy still under way must not free their old
        # slot again (it may be another sandbox's by then). Rare: a few ids for the agent's life.
        self._reclaimed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._sweeps: dict[str, int] = {}  # failed sweeps per quarantined sandbox (for the log)

    async def cleanup(self, sb_id: str, *, slot: int | None, pid: int) -> None:
        """Remove everything of one sandbox; try every step, then report what failed. When
        something of its container may still live, its slot is quarantined instead of freed,
        and that is not a failure (the module docstring): ``sb_id in self.quarantined``."""
        async with self._locks.setdefault(sb_id, asyncio.Lock()):
            try:
                await self._cleanup(sb_id, slot, pid)
            finally:
                if sb_id not in self.quarantined:
                    self._locks.pop(sb_id, None)

    async def _cleanup(self, sb_id: str, slot: int | None, pid: int) -> None:
        errors: list[str] = []
        held = self.quarantined.get(sb_id)
        if held is not None:  # a repeated destroy: the slot is the one the quarantine keeps
            slot, pid = held.slot, held.pid or pid
        elif slot is not None and sb_id in self._reclaimed:
            slot = None  # a sweep freed it since the caller read it: maybe another's by now
        cid = self._container_id(sb_id)
        try:
            await self.runtime.destroy(sb_id)
        except Exception as e:
            errors.append(f"runtime: {e}")
            await self._kill_by_cgroup(cid, errors)
        if pid:
            self.track(pid)
        d = self.sandboxes_dir / sb_id
        errors += self._unmount_all(d)
        if slot is not None and errors and await self._left_alive(sb_id, cid):
            self._quarantine(sb_id, Quarantined(slot, pid, "; ".join(errors)))
            return
        if slot is not None:
            try:
                await self.network.release(Slot(slot))
            except Exception as e:
                errors.append(f"network: {e}")
        if held is not None:
            del self.quarantined[sb_id]
            self._reclaimed.add(sb_id)
            log.info("event=slot_quarantine_released sandbox_id=%s slot=%d", sb_id, held.slot)
        if not mounts_under(d):
            await asyncio.to_thread(remove_tree, d, ignore_errors=True)  # any depth: trees.py
            if d.exists():
                errors.append(f"cannot remove {d}")
        if errors:
            raise InternalError(f"destroy {sb_id}: " + "; ".join(errors))

    def _quarantine(self, sb_id: str, q: Quarantined) -> None:
        """Keep the slot (claim, index, namespaces) and the directory (the record names the
        slot for the next agent, should this one restart) until nothing of it lives."""
        if sb_id not in self.quarantined:
            log.error(
                "event=slot_quarantined sandbox_id=%s slot=%d reason=%r consequence=slot_kept_until_"
                "container_gone destroy=answered_ok", sb_id, q.slot, q.reason,
            )  # fmt: skip
        self.quarantined[sb_id] = q
        self.network.quarantine(q.slot)

    @staticmethod
    async def _kill_by_cgroup(container_id: str, errors: list[str]) -> None:
        """The runtime could not delete it: kill what is in its cgroups (runc, crun and runsc
        all place a sandbox there) and remove them."""
        try:
            await remove_cgroups(container_id)
        except Exception as e:
            errors.append(f"cgroup: {e}")

    async def _left_alive(self, sb_id: str, container_id: str) -> bool:
        """Whether any process of the sandbox may still live: one in any of its cgroups (named
        ``container_id``), or a container the runtime still reports as not stopped (or cannot
        answer about)."""
        for ctrl in (*CONTROLLERS, "unified"):  # "unified": a hybrid host's cgroup v2 too
            # Child cgroups too (runtime/cmds_cgroup.py): cgroup.procs lists only its own.
            for d, _, _ in os.walk(cgroup_dir(ctrl, container_id)):
                try:
                    if (Path(d) / "cgroup.procs").read_text().split():
                        return True
                except FileNotFoundError:
                    continue
                except OSError:
                    return True  # cannot tell: keep it
        try:
            state = await self.runtime.state(sb_id)
        except Exception:
            return True
        return state is not None and state.status != ContainerStatus.STOPPED

    async def sweep(self) -> None:
        """Retry each quarantined sandbox's teardown; its slot is freed once nothing is left."""
        for sb_id, q in list(self.quarantined.items()):
            error = ""
            try:
                await self.cleanup(sb_id, slot=q.slot, pid=q.pid)
            except Exception as e:
                error = str(e)
            if (held := self.quarantined.get(sb_id)) is None:
                self._sweeps.pop(sb_id, None)
                if error:  # released; something else failed
                    log.warning("event=quarantine_cleanup_partial sandbox_id=%s error=%s", sb_id, error)
                continue
            n = self._sweeps[sb_id] = self._sweeps.get(sb_id, 0) + 1
            if n & (n - 1) == 0:  # sweeps 1, 2, 4, 8, ...: said, not at every one
                log.warning(
                    "event=slot_still_quarantined sandbox_id=%s slot=%d sweeps=%d error=%s",
                    sb_id, held.slot, n, error or held.reason,
                )  # fmt: skip

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
        if (held := self.quarantined.get(sb_id)) is not None:
            return held.slot
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
