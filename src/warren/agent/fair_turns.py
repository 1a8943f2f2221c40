"""Turns at a bounded resource of the agent, fair between tenants (``HostSandbox.tenant``: the
owning team). At most ``limit`` at once; a free turn goes to the waiter whose tenant holds the
fewest, then to the tenant served longest ago, then to the first come. Nobody is refused and
no turn is left idle while anyone waits. Used by create admission (admission.py) and by
exports of sandboxes' writable layers (layer_cache.py): first come, first served, one team's
burst held every other team's work behind all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Waiter:
    tenant: str
    seq: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairTurns:
    """At most ``limit`` turns at once; a free one goes to the waiter whose tenant holds the
    fewest, then to the tenant served longest ago, then to the first come."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()
        self._waiting: list[_Waiter] = []
        self._served: dict[str, int] = {}  # tenant → the grant counter at its last turn (held ones)
        self._grants = itertools.count(1)
        self._arrivals = itertools.count()

    def busy(self) -> bool:
        return bool(self._waiting) or self._held.total() >= self.limit

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str) -> AsyncIterator[None]:
        w = _Waiter(tenant, next(self._arrivals))
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
        try:
            yield
        finally:
            self._release(tenant)

    def _release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting and self._held.total() < self.limit:
            w = min(self._waiting, key=lambda w: (self._held[w.tenant], self._served.get(w.tenant, 0), w.seq))
            self._waiting.remove(w)
            self._held[w.tenant] += 1
            self._served[w.tenant] = next(self._grants)
            w.granted.set_result(None)
        # Only tenants holding or waiting for a turn are remembered (the order among those).
        if len(self._served) > 2 * (len(self._held) + len(self._waiting)) + 64:
            live = set(self._held) | {w.tenant for w in self._waiting}
            self._served = {t: n for t, n in self._served.items() if t in live}
