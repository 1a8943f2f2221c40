"""Turns at a bounded resource, fair between tenants (the agent's ``HostSandbox.tenant``, the
CP's teams). At most ``limit`` at once; a free turn goes to the waiter whose tenant holds the
fewest, then to the tenant served longest ago, then to the first come. Nobody is refused and
no turn is left idle while anyone waits. Used by the agent's create admission (agent/admission.py),
exports of sandboxes' writable layers (agent/layer_cache.py) and layer install slots
(agent/layer_slots.py), and by the CP's tenant threads (cp/services/tenant_threads.py): first
come, first served, one team's burst held every other team's work behind all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Waiter:
    tenant: str
    seq: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairQueue:
    """At most ``limit`` turns held at once; free ones go to waiters in :meth:`_next`'s order (by
    default: the tenant holding the fewest, then the one served longest ago, then first come)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()
        self._waiting: list[Waiter] = []
        self._served: dict[str, int] = {}  # tenant → the grant counter at its last turn
        self._grants = itertools.count(1)
        self._arrivals = itertools.count()

    @property
    def running(self) -> int:
        return self._held.total()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _take(self, tenant: str) -> None:
        self._held[tenant] += 1
        self._served[tenant] = next(self._grants)

    async def _wait(self, tenant: str) -> None:
        """Queue for a turn and wait for it (cancellable: a cancelled waiter leaves the queue, or
        gives back a turn granted meanwhile)."""
        w = Waiter(tenant, next(self._arrivals))
        self._waiting.append(w)
        self._dispatch()
        try:
            await w.granted
        except BaseException:
            if w in self._waiting:
                self._waiting.remove(w)
            elif w.granted.done() and not w.granted.cancelled():
                self._release(tenant)  # granted as it was cancelled: give the turn back
            self._dispatch()
            raise

    def _release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]
        self._dispatch()

    def _order(self, w: Waiter) -> tuple[int, int, int]:
        return self._held[w.tenant], self._served.get(w.tenant, 0), w.seq

    def _next(self) -> Waiter | None:
        return min(self._waiting, key=self._order, default=None)

    def _dispatch(self) -> None:
        while self._waiting and self.running < self.limit:
            w = self._next()
            if w is None:
                break
            self._waiting.remove(w)
            self._take(w.tenant)
            w.granted.set_result(None)
        # Only tenants holding or waiting for a turn are remembered (the order among those).
        if len(self._served) > 2 * (len(self._held) + len(self._waiting)) + 64:
            live = set(self._held) | {w.tenant for w in self._waiting}
            self._served = {t: n for t, n in self._served.items() if t in live}


class FairTurns(FairQueue):
    """At most ``limit`` turns at once; a free one goes to the waiter whose tenant holds the
    fewest, then to the tenant served longest ago, then to the first come."""

    def busy(self) -> bool:
        return bool(self._waiting) or self.running >= self.limit

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str) -> AsyncIterator[None]:
        await self._wait(tenant)
        try:
            yield
        finally:
            self._release(tenant)
