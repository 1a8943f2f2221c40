"""Background work (warm-pool and network-slot refills) waits until creates have been quiet
(agent/admission.py ``wait_quiet``): none in flight, and none received or ended for a while, so
a refill does not start in the gap between two creates of a burst (issue 17)."""

from __future__ import annotations

import asyncio

from warren.agent.admission import CreateAdmission

# Far longer than any test runs: a wait of this length never ends by itself here.
FOREVER_S = 3600.0
# Generous: a wait that must end does so at once; this only bounds a broken one.
DEADLINE_S = 30.0


async def _pending_after_others_ran(task: asyncio.Task[None]) -> bool:
    # Let every ready callback run (the task's first steps included) before looking.
    for _ in range(20):
        await asyncio.sleep(0)
    return not task.done()


async def test_quiet_at_once_when_no_create_was_ever_received() -> None:
    adm = CreateAdmission(limit=0)
    await asyncio.wait_for(adm.wait_quiet(FOREVER_S), DEADLINE_S)


async def test_not_quiet_while_a_create_is_in_flight() -> None:
    adm = CreateAdmission(limit=0)
    with adm.in_flight("sb-1"):
        waiter = asyncio.create_task(adm.wait_quiet(0.0))
        assert await _pending_after_others_ran(waiter)
    await asyncio.wait_for(waiter, DEADLINE_S)  # quiet period 0: ends with the create


async def test_not_quiet_right_after_a_create_ended() -> None:
    adm = CreateAdmission(limit=0)
    with adm.in_flight("sb-1"):
        pass
    assert adm.idle()  # Terminate's wait is not held back by the quiet period
    await asyncio.wait_for(adm.wait_idle(), DEADLINE_S)
    waiter = asyncio.create_task(adm.wait_quiet(FOREVER_S))
    try:
        assert await _pending_after_others_ran(waiter)
    finally:
        waiter.cancel()


async def test_a_waiter_that_saw_a_create_end_waits_on() -> None:
    adm = CreateAdmission(limit=0)
    with adm.in_flight("sb-1"):
        waiter = asyncio.create_task(adm.wait_quiet(FOREVER_S))
        assert await _pending_after_others_ran(waiter)  # waiting for the create to end
    # Ended just now: quiet only FOREVER_S from now.
    try:
        assert await _pending_after_others_ran(waiter)
    finally:
        waiter.cancel()
