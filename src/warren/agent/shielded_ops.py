"""Operations that run to completion whatever their caller does: destroys, pauses, resumes.

None of them can stop halfway. A caller that gives up (an RPC deadline, a cancelled request)
must not leave a cgroup frozen while the record says running, nor a teardown half done once the
sandbox's entry is gone (nothing would ever finish it: its mounts, netns, cgroups and processes
would stay behind). Each runs as a task of its own that callers await through a shield, and
stopping the agent waits for them, bounded (``asyncio.run`` would otherwise cancel them at
exit). A second request under the same key (a destroy of the same sandbox) joins the first
instead of running the clean-up again against a slot the first just freed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("warren.agent")

T = TypeVar("T")


class ShieldedOps:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keyed: dict[str, asyncio.Task[None]] = {}

    def detach(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task that runs to completion even if whoever awaits it is cancelled."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.shield(self.detach(coro))

    async def run_once(
        self,
        key: str,
        make: Callable[[], Coroutine[Any, Any, None]],
        done: Callable[[asyncio.Task[None]], object],
    ) -> None:
        """``make()``'s operation, or the one already under way for ``key``; ``done`` sees its
        task end (once, whoever awaited it)."""
        task = self._keyed.get(key)
        if task is None:
            task = self.detach(make())
            task.add_done_callback(done)
            self._keyed[key] = task
            task.add_done_callback(lambda _t: self._keyed.pop(key, None))
        await asyncio.shield(task)

    async def wait(self, limit_s: float) -> None:
        """Until those under way finish, at most ``limit_s`` seconds (a stuck one must not keep
        the agent from exiting)."""
        if self._tasks:
            log.info("event=waiting_for_operations count=%d", len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=limit_s)
