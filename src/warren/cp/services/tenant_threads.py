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
first come (warren/fair_turns.py), so one team's burst queues behind itself. A cancelled
caller keeps its turn until its thread has ended (warren/stoppable.py: the work is given a stop
event to check, where it can), so the threads never outnumber the turns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from warren.fair_turns import FairTurns
from warren.stoppable import run_stoppable

T = TypeVar("T")

WORKERS = 2  # per CP process: a third of the default executor on a 2-core machine


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
