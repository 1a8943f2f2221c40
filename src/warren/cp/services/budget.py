"""A per-replica byte budget for request data the CP must hold whole (issue 11, D10).

Streams never hold more than a chunk, but a unary exec answers its whole output in one JSON
body, and a unary upload whose ``file`` part comes before its ``path`` must be kept until the
path is known. Each such request reserves what it will hold (its estimate, taken before the
bytes are copied) and gives it back once the response is out. A reservation that does not fit
waits, first come first served, for up to ``wait_s`` (``WARREN_UNARY_BUDGET_WAIT_S``, 30 s);
then the answer is 503 ``server_busy`` with ``Retry-After``. A single reservation larger than
the whole budget waits until it is alone, so no legitimate request is refused for its size alone
(sizes are bounded by the unary caps).

Waiting rather than failing at once: a burst of large results queues and completes instead of
erroring, and since a request reserves all it needs in one step, waiters never hold part of the
budget, so they cannot deadlock one another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from warren.config import get_settings
from warren.errors import ServiceUnavailable

MiB = 1024 * 1024
WAIT_S = 30.0


class ByteBudget:
    def __init__(self, capacity: int, wait_s: float = WAIT_S) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.capacity or self.used == 0

    async def acquire(self, n: int, *, wait_s: float | None = None) -> None:
        if not self._waiters and self._fits(n):
            self.used += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait_s if wait_s is None else wait_s):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we gave up: give it back
            if isinstance(e, TimeoutError):
                raise self._busy() from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._wake()

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self.used += n
            fut.set_result(None)

    def _busy(self) -> ServiceUnavailable:
        err = ServiceUnavailable(
            "this control plane is holding as much unary exec output and upload data as it may "
            f"({self.capacity // MiB} MiB); retry shortly, or use the streaming routes",
            code="server_busy",
        )
        err.retry_after = 2  # type: ignore[attr-defined]  # becomes Retry-After (http_errors)
        return err

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self.acquire(n)
        try:
            yield
        finally:
            self.release(n)


_budget: ByteBudget | None = None


def unary_budget() -> ByteBudget:
    """This process's budget, ``WARREN_UNARY_BUDGET_MB`` (default 128 MiB), waited for up to
    ``WARREN_UNARY_BUDGET_WAIT_S`` (default 30 s)."""
    global _budget
    if _budget is None:
        settings = get_settings()
        _budget = ByteBudget(settings.unary_budget_mb * MiB, settings.unary_budget_wait_s)
    return _budget


__all__ = ["ByteBudget", "unary_budget"]
