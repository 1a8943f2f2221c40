"""asyncio steps the agent and the control plane share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["cancel_and_wait", "every", "outlast", "until_first"]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` (helpers of a stream or a server that is ending) and wait until each has
    ended, whatever it ended with: its result or error is of no use to a caller that is done with
    it, and a helper left running would outlive what it works on. All are cancelled before the
    first is awaited, so none waits behind another."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t


async def until_first(*tasks: asyncio.Future[Any]) -> None:
    """Wait until the first of ``tasks`` ends (two sides of a relay, a reply raced against an
    exit), then cancel the others and wait for each to end (:func:`cancel_and_wait`), also when
    the caller is cancelled meanwhile. Their outcomes stay on the tasks for the caller to read."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)


async def outlast(fut: asyncio.Future[Any], within_s: float | None = None) -> bool:
    """Wait for ``fut`` to end, whatever it ends with, through cancellations of the caller: what
    the caller holds (a turn, a lock, a record to make) must outlast the work. At most
    ``within_s`` seconds (None: no bound); whether it ended. Its error is retrieved (the
    caller's own cancellation is what goes on); the caller may still read it."""
    loop = asyncio.get_running_loop()
    deadline = None if within_s is None else loop.time() + within_s
    while not fut.done():
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return False
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({fut}, timeout=left)
    if not fut.cancelled():
        fut.exception()
    return True


async def every(
    interval_s: float, one_pass: Callable[[], Awaitable[object]], log: logging.Logger, task: str
) -> None:
    """``one_pass()`` every ``interval_s`` (the first a full interval from now), forever; a pass
    that fails is logged as ``event=background_error task=<task>`` with its traceback, and the
    next one runs on time."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await one_pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=background_error task=%s", task)
