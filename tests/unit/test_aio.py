"""``warren.aio``: ``outlast``, a caller cancelled while it waits for work still waits for it (what
it holds must outlast the work), within a bound when it gives one; ``until_first``, the first of
two tasks to end ends the other, which has ended when it returns, also when its caller is
cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from warren.aio import outlast, until_first


async def test_a_cancelled_caller_still_waits_for_the_work() -> None:
    gate = asyncio.Event()
    work = asyncio.ensure_future(gate.wait())
    order: list[str] = []

    async def caller() -> None:
        await outlast(work)
        order.append("caller")

    waiting = asyncio.ensure_future(caller())
    await asyncio.sleep(0.01)
    waiting.cancel()  # twice: each cancellation is outlasted
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert not waiting.done() and not work.done()
    gate.set()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert work.done() and order == ["caller"]


async def test_within_a_bound_and_the_works_error_retrieved() -> None:
    never = asyncio.get_running_loop().create_future()
    assert await outlast(never, 0.05) is False and not never.done()
    never.cancel()

    async def fails() -> None:
        raise ValueError("boom")

    failing = asyncio.ensure_future(fails())
    assert await outlast(failing) is True
    assert isinstance(failing.exception(), ValueError)


async def test_the_first_to_end_ends_the_other_and_its_outcome_stays() -> None:
    cleaned: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # a clean-up that takes a turn of its own
            cleaned.append("slow")

    async def fails() -> None:
        raise ValueError("boom")

    other, first = asyncio.ensure_future(slow()), asyncio.ensure_future(fails())
    await until_first(other, first)
    assert other.cancelled() and cleaned == ["slow"]  # ended, not just asked to
    assert isinstance(first.exception(), ValueError)


async def test_a_cancelled_caller_leaves_no_task_running() -> None:
    a, b = asyncio.ensure_future(asyncio.sleep(60)), asyncio.ensure_future(asyncio.sleep(60))
    waiting = asyncio.ensure_future(until_first(a, b))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled() and a.cancelled() and b.cancelled()
