"""Create admission (for SandboxManager): the creates received and not finished, their turns, and
whether the agent takes any more.

At most ``limit`` creates build at once (``WARREN_AGENT_CREATE_CONCURRENCY``; 0 is unlimited),
the rest wait. Turns are fair between tenants (``HostSandbox.tenant``: the owning team): a free
turn goes to the waiting create whose tenant holds the fewest turns, then the tenant served
longest ago, then first come first served. In the order they came, one team's burst of creates
(up to its quota, or its owner's teams' quotas) held every other team's create behind all of it.

A create is *in flight* from the moment it is received (queued included) to the moment it ends
either way; the control plane leaves the `pending` records of those alone, ``Terminate``
refuses new ones and waits for those under way, and background work (warm-pool and
network-slot refills) waits until there are none *and* none was received or ended for
``QUIET_S``: a burst reaches an agent as a stream with gaps between its creates (each waits its
turn on the control plane's CPU first), and a refill begun in such a gap would build a sandbox
beside the burst's next creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

from warren.errors import InvalidState
from warren.fair_turns import FairTurns

log = logging.getLogger("warren.agent")

# How long no create may have been received or ended before background work starts. A burst's
# creates reach an agent tens of ms apart, even on a loaded 2-core host; refills start this much
# after the last one.
QUIET_S = 0.5


class CreateAdmission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = FairTurns(limit) if limit > 0 else None
        self._in_flight: set[str] = set()
        # Cleared while any create (queued or under way) is in flight.
        self._none = asyncio.Event()
        self._none.set()
        # When a create was last received or ended (monotonic).
        self._last_change = -1e9
        self._accepting = True

    def __contains__(self, sb_id: str) -> bool:
        return sb_id in self._in_flight

    def creating(self) -> list[str]:
        """The creates in flight, sorted."""
        return sorted(self._in_flight)

    def idle(self) -> bool:
        """No create in flight."""
        return self._none.is_set()

    async def wait_idle(self) -> None:
        """Until no create is in flight."""
        await self._none.wait()

    async def wait_quiet(self, quiet_s: float = QUIET_S) -> None:
        """Until no create is in flight and none was received or ended for ``quiet_s`` (what
        background work waits for; see the module's doc)."""
        while True:
            await self._none.wait()
            left = self._last_change + quiet_s - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    def stop_accepting(self) -> None:
        """The host is being taken out of service: creates not yet admitted are refused."""
        self._accepting = False

    def check_accepting(self) -> None:
        if not self._accepting:
            raise InvalidState("the agent is shutting down (host removed): it creates no more sandboxes")

    @contextlib.contextmanager
    def in_flight(self, sb_id: str) -> Iterator[None]:
        """Around a whole create, from its receipt to its end."""
        self._in_flight.add(sb_id)
        self._none.clear()
        self._last_change = time.monotonic()
        try:
            yield
        finally:
            self._last_change = time.monotonic()
            self._in_flight.discard(sb_id)
            if not self._in_flight:
                self._none.set()

    @contextlib.asynccontextmanager
    async def turn(self, sb_id: str, tenant: str, times: list[float]) -> AsyncIterator[None]:
        """A create's turn (at most ``limit`` at once, fair between tenants); appends the
        monotonic times it was queued and admitted to ``times``."""
        self.check_accepting()
        times.append(time.monotonic())
        if self._slots is not None and self._slots.busy():
            log.info("event=create_queued sandbox_id=%s", sb_id)
        async with self._slots.turn(tenant) if self._slots is not None else contextlib.nullcontext():
            self.check_accepting()  # the agent may have begun terminating meanwhile
            times.append(time.monotonic())
            yield
