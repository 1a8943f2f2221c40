"""run_stoppable: a cancelled caller stops its thread and waits for it (warren/stoppable.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from warren.stoppable import Stopped, run_stoppable


async def test_the_result_comes_back() -> None:
    assert await run_stoppable(lambda stop: 42) == 42


async def test_a_cancelled_caller_waits_for_the_thread_to_stop() -> None:
    started, ended = threading.Event(), threading.Event()

    def work(stop: threading.Event) -> None:
        started.set()
        try:
            while not stop.wait(0.01):
                pass
            raise Stopped
        finally:
            ended.set()

    task = asyncio.ensure_future(run_stoppable(work))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()  # the cancellation came back only once the work had ended


async def test_a_second_cancel_still_waits() -> None:
    started, ended = threading.Event(), threading.Event()

    def work(stop: threading.Event) -> None:
        started.set()
        stop.wait(10)
        stop.wait(0.2)  # a last step after the stop
        ended.set()

    task = asyncio.ensure_future(run_stoppable(work))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()
