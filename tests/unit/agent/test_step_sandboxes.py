"""StepSandboxes (agent/step_sandboxes.py): a build step's sandbox is torn down once, whoever
ends it first (its step or ``Terminate``), and one made after ``Terminate`` began is refused."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from warren.agent.record import HostSandbox
from warren.agent.shielded_ops import ShieldedOps
from warren.agent.step_sandboxes import StepSandboxes
from warren.agent.teardown import Teardown


class _Teardown:
    def __init__(self) -> None:
        self.cleaned: list[tuple[str, int | None]] = []

    async def cleanup(self, sb_id: str, *, slot: int | None, pid: int) -> None:
        await asyncio.sleep(0.01)
        self.cleaned.append((sb_id, slot))


def _steps() -> tuple[StepSandboxes, _Teardown]:
    teardown = _Teardown()
    return StepSandboxes(ShieldedOps(), cast(Teardown, teardown)), teardown


def _sandbox(sb_id: str, slot: int) -> HostSandbox:
    return cast(HostSandbox, SimpleNamespace(id=sb_id, slot=slot, pid=0))


async def test_the_step_and_terminate_together_tear_it_down_once() -> None:
    steps, teardown = _steps()
    sb = _sandbox("step-a", 7)
    steps.making(sb.id)
    assert steps.made(sb) and sb.id in steps
    await asyncio.gather(steps.end_all(), steps.end(sb), steps.end(sb))
    await steps.end(sb)  # the step's own finally, after Terminate's end: nothing more
    # Freed once: a second clean-up would free slot 7, which another sandbox may hold by then.
    assert teardown.cleaned == [("step-a", 7)]
    assert sb.id not in steps


async def test_a_sandbox_made_after_terminate_began_is_refused() -> None:
    steps, teardown = _steps()
    steps.making("step-b")
    await steps.end_all()  # Terminate, while step-b is still being made
    sb = _sandbox("step-b", 3)
    assert not steps.made(sb)  # its maker ends it and fails the step
    await steps.end(sb)
    assert teardown.cleaned == [("step-b", 3)]


async def test_a_create_that_failed_leaves_no_id() -> None:
    steps, teardown = _steps()
    steps.making("step-c")
    steps.not_made("step-c")
    assert "step-c" not in steps and teardown.cleaned == []
