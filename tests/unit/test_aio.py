"""``warren.aio``: ``outlast``, a caller cancelled while it waits for work still waits for it (what
it holds must outlast the work), within a bound when it gives one; ``until_first``, the first of
two tasks to end ends the other, which has ended when it returns, also when its caller is
cancelled; ``every``, a pass that fails is logged and the next one runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from warren.aio import cancel_and_wait, every, outlast, until_first


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


async def test_every_logs_a_failed_pass_and_runs_the_next(caplog: pytest.LogCaptureFixture) -> None:
    passes: list[int] = []

    async def one_pass() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("the first pass fails")

    log = logging.getLogger("warren.test_every")
    with caplog.at_level(logging.ERROR, logger="warren.test_every"):
        task = asyncio.create_task(every(0.01, one_pass, log, "probe"))
        while len(passes) < 3:
            await asyncio.sleep(0.01)
        await cancel_and_wait(task)
    assert "event=background_error task=probe" in caplog.text and "the first pass fails" in caplog.text
