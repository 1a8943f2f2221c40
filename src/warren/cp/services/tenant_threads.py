"""Thread work a tenant sizes, in an executor of its own, in turns fair between teams.

A CP worker's short blocking calls (the template store's chunk reads and writes, asyncio's own
``getaddrinfo`` when a connection is opened) run in asyncio's default executor: ``min(32,
cpu + 4)`` threads, 6 on a 2-core machine. Work whose length a tenant chooses ran there too, in
one call each: an image import's ``read_image`` (every layer decompressed, parsed and written
out), a build's context index and its COPY steps' staging tars. Four teams' imports (two each,
the per-team limit) held all six threads for as long as their images made them, and every other
team's store read or connection waited behind them (session 23: a warm-pool set whose layer
is pushed from the store, 0.16 s alone, took 32 s).

Here that work gets :data:`WORKERS` threads of its own per process. A turn is one thread; a
free one goes to the team holding the fewest, then to the team served longest ago, then to the
first come (agent/fair_turns.py's order), so one team's burst queues behind itself. A cancelled
caller keeps its turn until its thread has ended (warren/stoppable.py: the work is given a stop
event to check, where it can), so the threads never outnumber the turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from warren.stoppable import run_stoppable

T = TypeVar("T")

WORKERS = 2  # per CP process: a third of the default executor on a 2-core machine


@dataclass(eq=False)
class _Waiter:
    team: str
    seq: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairTurns:
    """At most ``limit`` turns held at once; a free one goes to the waiter whose team holds the
    fewest, then to the team served longest ago, then to the first come. Nobody is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()
        self._waiting: list[_Waiter] = []
        self._served: dict[str, int] = {}  # team → the grant counter at its last turn
        self._grants = itertools.count(1)
        self._arrivals = itertools.count()

    @property
    def running(self) -> int:
        return self._held.total()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self, team: str) -> AsyncIterator[None]:
        w = _Waiter(team, next(self._arrivals))
        self._waiting.append(w)
        self._dispatch()
        try:
            await w.granted
        except BaseException:
            if w in self._waiting:
                self._waiting.remove(w)
            elif w.granted.done() and not w.granted.cancelled():
                self._release(team)  # granted as it was cancelled: given back
            self._dispatch()
            raise
        try:
            yield
        finally:
            self._release(team)

    def _release(self, team: str) -> None:
        self._held[team] -= 1
        if self._held[team] <= 0:
            del self._held[team]
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting and self.running < self.limit:
            w = min(self._waiting, key=lambda w: (self._held[w.team], self._served.get(w.team, 0), w.seq))
            self._waiting.remove(w)
            self._held[w.team] += 1
            self._served[w.team] = next(self._grants)
            w.granted.set_result(None)
        if len(self._served) > 2 * (len(self._held) + len(self._waiting)) + 64:
            live = set(self._held) | {w.team for w in self._waiting}
            self._served = {t: n for t, n in self._served.items() if t in live}


class TenantThreads:
    """The process's executor for tenant-sized work, with its fair turns."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.turns = FairTurns(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="warren-tenant")

    async def run(self, team: str, work: Callable[[threading.Event], T]) -> T:
        """``work(stop)`` in one of the executor's threads, in ``team``'s turn; its result. A
        cancelled caller sets ``stop`` and holds the turn until ``work`` has returned."""
        async with self.turns.turn(team):
            return await run_stoppable(work, executor=self._executor)


_THREADS = TenantThreads()


async def run(team: object, work: Callable[[threading.Event], T]) -> T:
    """``work(stop)`` in the process's tenant executor, in ``team``'s fair turn (a team id)."""
    return await _THREADS.run(str(team), work)


async def call(team: object, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn(*args, **kwargs)`` there: work that has no step to check a stop event at (its
    cancelled caller still holds the turn until it returns)."""
    return await _THREADS.run(str(team), lambda _stop: fn(*args, **kwargs))
