"""network._all_or_none: a slot's namespaces and its rules are made side by side; the first
failure cancels the other and is raised only once both have ended, so the slot's release (the
caller's cleanup) finds everything either of them did."""

from __future__ import annotations

import asyncio

import pytest

from warren.agent.network import _all_or_none


async def test_the_first_failure_is_raised_once_the_other_step_has_ended() -> None:
    ended: list[str] = []
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a step that needs a moment to wind down (a make's answer)
            ended.append("slow")

    async def failing() -> None:
        await started.wait()
        raise RuntimeError("iptables failed")

    with pytest.raises(RuntimeError, match="iptables failed"):
        await _all_or_none(slow(), failing())
    assert ended == ["slow"]


async def test_a_cancelled_caller_waits_for_both_steps() -> None:
    ended: list[str] = []
    started = asyncio.Event()

    async def step(name: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            ended.append(name)

    task = asyncio.create_task(_all_or_none(step("a"), step("b")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(ended) == ["a", "b"]


async def test_both_succeed() -> None:
    done: list[int] = []

    async def step(n: int) -> None:
        await asyncio.sleep(0)
        done.append(n)

    await _all_or_none(step(1), step(2))
    assert sorted(done) == [1, 2]
