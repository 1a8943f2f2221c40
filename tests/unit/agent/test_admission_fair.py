"""Create turns are fair between tenants (agent/admission.py ``FairTurns``)."""

from __future__ import annotations

import asyncio

from warren.agent.admission import CreateAdmission
from warren.fair_turns import FairTurns


async def _order(turns: FairTurns, arrivals: list[str]) -> list[str]:
    """The tenants in the order their turns began; the first turns are held until all came."""
    began: list[str] = []
    gate = asyncio.Event()

    async def one(tenant: str) -> None:
        async with turns.turn(tenant):
            began.append(tenant)
            await gate.wait()
            await asyncio.sleep(0)

    tasks = []
    for t in arrivals:
        tasks.append(asyncio.create_task(one(t)))
        await asyncio.sleep(0)  # each waiting before the next arrives
    gate.set()
    await asyncio.gather(*tasks)
    return began


async def test_a_later_tenant_goes_before_a_burst() -> None:
    order = await _order(FairTurns(1), ["a"] * 5 + ["b"])
    assert order.index("b") <= 1, order


async def test_tenants_alternate_when_both_wait() -> None:
    order = await _order(FairTurns(1), ["a", "a", "a", "b", "b", "b"])
    assert order[1:5] in (["b", "a", "b", "a"], ["a", "b", "a", "b"]) or order == [
        "a",
        "b",
        "a",
        "b",
        "a",
        "b",
    ], order


async def test_at_most_limit_at_once_and_none_left_idle() -> None:
    turns, held, peak = FairTurns(2), [0], [0]

    async def one(tenant: str) -> None:
        async with turns.turn(tenant):
            held[0] += 1
            peak[0] = max(peak[0], held[0])
            await asyncio.sleep(0.01)
            held[0] -= 1

    await asyncio.gather(*(one("a") for _ in range(6)))  # one tenant alone uses every turn
    assert peak[0] == 2


async def test_a_cancelled_waiter_leaves_its_place() -> None:
    turns = FairTurns(1)
    gate = asyncio.Event()

    async def hold() -> None:
        async with turns.turn("a"):
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    gate.set()
    await holder
    async with turns.turn("b"):  # the turn came back: not held by the cancelled waiter
        pass
    assert not turns.busy()


async def test_admission_passes_the_tenant() -> None:
    adm = CreateAdmission(1)
    times: list[float] = []
    async with adm.turn("sb-1", "team", times):
        pass
    assert len(times) == 2
