"""The control plane's background workers (the host monitor, the layer GC, the lifetime
sweeper): one asyncio task each per replica, started and stopped by the lifespan in
``cp/app.py``. Each says what one pass is; starting, stopping and the pass loop are here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Worker:
    """A task running :meth:`_loop` from :meth:`start` until :meth:`stop`."""

    task_name = "worker"
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def every(
    interval_s: float, one_pass: Callable[[], Awaitable[object]], log: logging.Logger, what: str
) -> None:
    """``one_pass()`` every ``interval_s`` (the first a full interval from now), forever; a pass
    that fails is logged as "<what> failed" and the next one runs on time."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await one_pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", what)
