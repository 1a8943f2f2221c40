"""agent/layer_slots.py: a cap on layer installs at once, fair turns between teams, a bounded
queue, and slots that outlive a caller who stopped waiting."""

from __future__ import annotations

import asyncio

import pytest

from warren.agent.layer_slots import InstallsBusy, InstallSlots, Ticket


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_cap_and_first_come_first_served_within_a_team() -> None:
    slots = InstallSlots(2, 8)
    a1, a2 = await slots.acquire("a"), await slots.acquire("a")
    order: list[str] = []

    async def wait(name: str) -> Ticket:
        t = await slots.acquire("a")
        order.append(name)
        return t

    w = [asyncio.create_task(wait(n)) for n in ("x", "y", "z")]
    await _settle()
    assert slots.running == 2 and slots.waiting == 3 and order == []
    a1.release()
    a1.release()  # idempotent: one slot back, not two
    await _settle()
    assert order == ["x"] and slots.running == 2
    a2.release()
    await _settle()
    assert order == ["x", "y"]
    for t in w[:2]:
        (await t).release()
    (await w[2]).release()
    assert slots.running == 0 and slots.waiting == 0


async def test_a_team_holding_half_waits_while_another_team_waits() -> None:
    slots = InstallSlots(4, 16)
    held = [await slots.acquire("a") for _ in range(4)]  # nobody else wanted one
    got: list[str] = []

    async def wait(team: str) -> Ticket:
        t = await slots.acquire(team)
        got.append(team)
        return t

    tasks = [asyncio.create_task(wait("a")) for _ in range(4)]
    await _settle()
    tasks.append(asyncio.create_task(wait("b")))
    tasks.append(asyncio.create_task(wait("b")))
    await _settle()
    for _ in range(2):  # a's slots free up: b's waiters first (fewest held), though they came last
        held.pop().release()
        await _settle()
    assert got == ["b", "b"]
    held.pop().release()  # a holds 1 (< half of 4): its first waiter
    await _settle()
    assert got == ["b", "b", "a"]
    for t in held:
        t.release()
    await _settle()
    for t in tasks:
        (await t).release()
    await _settle()
    assert slots.running == 0


async def test_one_slot_alternates_between_teams() -> None:
    slots = InstallSlots(1, 16)
    first = await slots.acquire("a")
    got: list[str] = []

    async def wait(team: str) -> None:
        t = await slots.acquire(team)
        got.append(team)
        await asyncio.sleep(0)
        t.release()

    tasks = [asyncio.create_task(wait("a")) for _ in range(3)]
    await _settle()
    tasks.append(asyncio.create_task(wait("b")))
    await _settle()
    first.release()
    await asyncio.gather(*tasks)
    assert got[0] == "b", got  # not behind all of a's queue


async def test_the_queue_is_bounded_per_team() -> None:
    slots = InstallSlots(1, 4)
    t = await slots.acquire("a")
    tasks = [asyncio.create_task(slots.acquire("a")) for _ in range(2)]
    await _settle()
    with pytest.raises(InstallsBusy, match=r"^install_queue_full"):
        await slots.acquire("a")  # a's share of the queue is 2
    other = asyncio.create_task(slots.acquire("b"))  # b still gets a place
    await _settle()
    assert slots.waiting == 3
    other.cancel()
    await _settle()
    assert slots.waiting == 2
    t.release()
    for task in tasks:
        (await task).release()
    assert slots.running == 0


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    slots = InstallSlots(1, 4)
    t = await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    await _settle()
    t.release()  # granted to b ...
    waiter.cancel()  # ... as it is cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.running == 0
    (await slots.acquire("c")).release()


async def test_a_slot_kept_for_work_that_outlives_its_caller() -> None:
    slots = InstallSlots(1, 4)
    t = await slots.acquire("a")
    work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    t.keep_until(work)
    t.release()  # the caller gave up: the work goes on and keeps the slot
    assert slots.running == 1
    work.set_result(None)
    await _settle()
    assert slots.running == 0


async def test_an_odd_capacity_leaves_no_slot_idle() -> None:
    slots = InstallSlots(5, 16)  # a team's share: 2
    held = [await slots.acquire(t) for t in ("a", "a", "b", "b")]
    waiters = [asyncio.create_task(slots.acquire(t)) for t in ("a", "b")]
    await _settle()
    assert slots.running == 5 and slots.waiting == 1  # the fifth slot went to one of them
    for t in held:
        t.release()
    for w in waiters:
        (await w).release()
    assert slots.running == 0
