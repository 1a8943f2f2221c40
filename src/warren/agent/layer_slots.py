"""How many layer installs run at once on this host, and whose turn is next (docs/templates.md §2).

An install (a conversion: the converter child and ``tar2sqfs``; or an extraction child) may
spend a core for minutes (``RLIMIT_CPU`` 60 s + 1 s per 5 MB, or 300 s). Without a bound, one
team pushing many distinct layers at once (image imports, builds, creates on fresh templates)
ran as many as it asked for, and another team's create waited behind all of them for CPU.

:class:`InstallSlots` admits at most ``capacity`` installs at once; the rest wait in a bounded
queue. Turns are fair between teams: a waiter whose team holds the fewest slots goes first (then
the team served longest ago, then first come first served within a team), and a team holding
half the slots or more gets no further one while another team waits (it may use them all when
nobody else wants one). A team may keep at most half the queue waiting: past that (or a full
queue) :class:`InstallsBusy`, which the CP retries (``cp/services/layers.py``).

A waiter holds nothing but its place: the ``PutLayer`` handler waits here before it reads the
layer's first chunk, and the CP sends no chunk before the agent says it was admitted (the
call's initial metadata), so a queued push holds no bytes in gRPC's windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from warren.errors import WarrenError
from warren.fair_turns import FairQueue, Waiter

log = logging.getLogger("warren.agent.layers")

BUSY_PREFIX = "install_queue_full"
# The initial-metadata key of an admitted PutLayer: its chunks may come now.
ADMITTED_KEY = "warren-layer-admitted"


class InstallsBusy(WarrenError):
    """The install queue is full for this team (gRPC ``RESOURCE_EXHAUSTED``; the CP retries)."""

    code = "install_queue_full"


class Ticket:
    """One admitted install's slot. :meth:`release` is idempotent; :meth:`keep_until` hands the
    slot to work that outlives its caller (a shielded thread the caller stopped waiting for)."""

    def __init__(self, slots: InstallSlots, team: str) -> None:
        self._slots, self.team = slots, team
        self._done = False
        self._kept = False

    def release(self) -> None:
        if not self._done and not self._kept:
            self._done = True
            self._slots._release(self.team)

    def keep_until(self, fut: asyncio.Future[Any]) -> None:
        """Release only when ``fut`` is done, whatever :meth:`release` calls come first."""
        if self._done or self._kept:
            return
        self._kept = True

        def _finish(_: object) -> None:
            self._kept = False
            self.release()

        fut.add_done_callback(_finish)


class InstallSlots(FairQueue):
    def __init__(self, capacity: int, queue: int) -> None:
        super().__init__(max(1, capacity))
        self.queue_max = max(1, queue)
        # A team's share while others wait, and its share of the queue.
        self.team_share = max(1, self.capacity // 2)
        self.team_queue = max(1, self.queue_max // 2)

    @property
    def capacity(self) -> int:
        return self.limit

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, team: str) -> AsyncIterator[Ticket]:
        ticket = await self.acquire(team)
        try:
            yield ticket
        finally:
            ticket.release()

    async def acquire(self, team: str) -> Ticket:
        """Wait for a slot (cancellable: a cancelled waiter leaves the queue, or gives back a
        slot granted in the meantime). ``InstallsBusy`` when the team's queue share is full."""
        if not self._waiting and self.running < self.capacity:
            self._take(team)
            return Ticket(self, team)
        if len(self._waiting) >= self.queue_max or self._queued(team) >= self.team_queue:
            raise InstallsBusy(
                f"{BUSY_PREFIX}: {self.running} layer installs running and {len(self._waiting)} "
                "queued on this host; retry"
            )
        log.info(
            "event=layer_install_queued team=%s running=%d waiting=%d",
            team[:40] or "-", self.running, len(self._waiting) + 1,
        )  # fmt: skip
        await self._wait(team)
        return Ticket(self, team)

    def _queued(self, team: str) -> int:
        return sum(1 for w in self._waiting if w.tenant == team)

    def _next(self) -> Waiter | None:
        teams = {w.tenant for w in self._waiting}
        eligible = [w for w in self._waiting if self._held[w.tenant] < self.team_share or teams == {w.tenant}]
        # Every waiting team at its share (an odd capacity): a free slot is not left idle.
        return min(eligible or self._waiting, key=self._order, default=None)
