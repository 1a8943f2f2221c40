"""ResumeHolds (agent/resume_holds.py): what ends a hold, and that a waiter never waits past
its bound."""

from __future__ import annotations

import asyncio

import pytest

from warren.agent import resume_holds
from warren.agent.resume_holds import ResumeHolds


async def _waiting(holds: ResumeHolds, sb_id: str) -> asyncio.Task[None]:
    task = asyncio.create_task(holds.wait(sb_id))
    await asyncio.sleep(0.01)
    return task


async def test_a_sandbox_not_on_hold_is_not_waited_for() -> None:
    await asyncio.wait_for(ResumeHolds().wait("sb-a"), 1)


async def test_a_release_lets_every_waiter_go() -> None:
    holds = ResumeHolds()
    holds.hold("sb-a")
    waiters = [await _waiting(holds, "sb-a") for _ in range(3)]
    other = await _waiting(holds, "sb-b")
    assert other.done() and not any(w.done() for w in waiters)
    holds.release("sb-a")
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert not holds.held("sb-a")


async def test_a_failed_pause_lets_go_and_a_resume_lets_go_whatever_it_answers() -> None:
    holds = ResumeHolds()
    with pytest.raises(RuntimeError), holds.during_pause("sb-a", resume_after=True):
        raise RuntimeError("the freeze failed")
    assert not holds.held("sb-a")
    with holds.during_pause("sb-a", resume_after=True):
        pass
    assert holds.held("sb-a")

    async def failed_resume() -> None:
        raise RuntimeError("the thaw failed")

    with pytest.raises(RuntimeError):
        await holds.released_after("sb-a", failed_resume())
    assert not holds.held("sb-a")


async def test_a_pause_without_resume_after_holds_nothing() -> None:
    holds = ResumeHolds()
    with holds.during_pause("sb-a", resume_after=False):
        pass
    assert not holds.held("sb-a")


async def test_a_waiter_goes_after_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CP that never resumes it: each call is answered as the sandbox then is."""
    monkeypatch.setattr(resume_holds, "WAIT_S", 0.05)
    holds = ResumeHolds()
    holds.hold("sb-a")
    await asyncio.wait_for(holds.wait("sb-a"), 1)
    assert holds.held("sb-a")  # the hold stays for its resume; only the waiter left
