"""Build steps' sandboxes (build_step.py): made like any other, never registered, each ended once.

They are not in the manager's registry, so nothing lists, reaps, re-adopts or destroys them the
way it does a tenant's sandbox. Their step's ``finally`` ends each one. ``Terminate`` (the host
taken out of service) ends them too (:meth:`StepSandboxes.end_all`): left to their steps, those
ended only when gRPC cancelled the steps' calls as the server stopped, and a step whose teardown
had not started by the time the agent exited ran on past it, mounted and holding its network
slot, with no agent ever to start on that data dir again (session 35). Ending one is shielded
and runs once, whoever asks first (the step or ``Terminate``): a second clean-up would free a
network slot another sandbox may hold by then.
"""

from __future__ import annotations

import asyncio
import logging

from warren.agent.record import HostSandbox
from warren.agent.shielded_ops import ShieldedOps
from warren.agent.teardown import Teardown
from warren.errors import ServiceUnavailable

# What a step ended by Terminate fails with (gRPC UNAVAILABLE, agent/rpc_errors.py).
OUT_OF_SERVICE = "the build host was taken out of service during the step"

log = logging.getLogger("warren.agent.build")


class StepSandboxes:
    def __init__(self, ops: ShieldedOps, teardown: Teardown) -> None:
        self._ops, self._teardown = ops, teardown
        self._ids: set[str] = set()  # being made or made, until ended
        self._made: dict[str, HostSandbox] = {}  # made and not yet ended
        self._closed = False  # Terminate began: a sandbox made from now on is ended at once

    def __contains__(self, sb_id: str) -> bool:
        """Being made, or made and not being ended."""
        return sb_id in self._ids

    def making(self, sb_id: str) -> None:
        self._ids.add(sb_id)

    def made(self, sb: HostSandbox) -> bool:
        """Recorded; False once ``Terminate`` began (:meth:`end_all`): its maker ends it and
        fails the step, as no sandbox may come up after the rest were destroyed."""
        self._made[sb.id] = sb
        return not self._closed

    def not_made(self, sb_id: str) -> None:
        """Its create failed or was cancelled (the builder rolled it back)."""
        self._ids.discard(sb_id)

    async def end(self, sb: HostSandbox) -> None:
        """Destroy ``sb`` (shielded; joins an end under way, and a later one does nothing)."""
        await self._ops.run_once(sb.id, lambda: self._end(sb), _log_failure)

    async def end_all(self) -> None:
        """Every step's sandbox made so far, and from now on every one as it is made
        (``Terminate``); their steps then fail."""
        self._closed = True
        for sb_id in self._made:
            log.info("event=build_step_ended sandbox_id=%s reason=terminate", sb_id)
        await asyncio.gather(*(self.end(sb) for sb in list(self._made.values())))

    async def _end(self, sb: HostSandbox) -> None:
        self._ids.discard(sb.id)  # first: its step, seeing its command's stream break, asks
        if self._made.pop(sb.id, None) is sb:
            await self._teardown.cleanup(sb.id, slot=sb.slot, pid=sb.pid)


def out_of_service() -> ServiceUnavailable:
    return ServiceUnavailable(OUT_OF_SERVICE)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("event=build_step_teardown_failed error=%s", e)
