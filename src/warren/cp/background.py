"""The control plane's background workers (the host monitor, the layer GC, the lifetime
sweeper): one asyncio task each per replica, started and stopped by the lifespan in
``cp/app.py``. Each says what one pass is; starting and stopping are here, the pass loop
(``warren.aio.every``) is shared with the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib


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
