"""How often ``UpdateNetwork`` may apply a sandbox's egress rules (egress_update.py).

Each application rewrites the sandbox's chains in one ``iptables-restore`` transaction (and may
start or stop its resolver), holding the host's xtables lock while it runs: ~6 ms of CPU, the
agent's and its ``iptables-restore``'s. The CP lets one change per sandbox through at a time (a
concurrent one is 409 ``busy``), which bounded nothing in time: one tenant's loop of
``PATCH …/network`` on one sandbox had 306-341 applied in 15 s, 1.8 s of that CPU (session 23,
tests/security/test_attack_session23_network_patch.py; after: 15, 0.2 s). Now a change waits
here, never refused:

- at least ``SANDBOX_INTERVAL_S`` after the sandbox's previous application ended;
- then for its tenant's turn (``HostSandbox.tenant``): one application at a time per tenant, at
  least ``TENANT_INTERVAL_S`` apart, first come first served. The CP's one change per sandbox
  makes a tenant's queue at most its sandboxes on this host long.

So one tenant costs the agent at most one application per ``TENANT_INTERVAL_S`` whatever its
number of sandboxes, and one sandbox one per ``SANDBOX_INTERVAL_S``. A waiter that is cancelled
(the CP's call ended) leaves the queue without holding anyone back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from warren import clock

__all__ = ["SANDBOX_INTERVAL_S", "TENANT_INTERVAL_S", "ChangePace"]

SANDBOX_INTERVAL_S = 1.0  # between the end of a sandbox's application and the start of its next
TENANT_INTERVAL_S = 0.25  # between two applications of one tenant's sandboxes on this agent


@dataclass
class _Tenant:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # FIFO: asyncio's locks wake in order
    last: float = float("-inf")  # when its last application ended
    users: int = 0  # changes waiting for or holding its lock


class ChangePace:
    """The turns of one agent's egress rule changes (one per ``SandboxManager``)."""

    def __init__(self, sandbox_s: float = SANDBOX_INTERVAL_S, tenant_s: float = TENANT_INTERVAL_S) -> None:
        self.sandbox_s, self.tenant_s = sandbox_s, tenant_s
        self._last: dict[str, float] = {}  # sandbox id → when its last application ended
        self._tenants: dict[str, _Tenant] = {}

    @contextlib.asynccontextmanager
    async def turn(self, sandbox_id: str, tenant: str) -> AsyncIterator[None]:
        """Wait for the sandbox's interval and the tenant's turn, then hold the turn for the
        block (the application); its end starts both intervals again."""
        self._forget()
        await _until(lambda: self._last.get(sandbox_id, float("-inf")) + self.sandbox_s)
        t = self._tenants.setdefault(tenant, _Tenant())
        t.users += 1
        try:
            async with t.lock:
                await _until(lambda: t.last + self.tenant_s)
                try:
                    yield
                finally:
                    t.last = self._last[sandbox_id] = clock.monotonic()
        finally:
            t.users -= 1

    def _forget(self) -> None:
        """Drop what no longer delays anyone (so both maps hold only the last interval's)."""
        now = clock.monotonic()
        for sid in [s for s, at in self._last.items() if at + self.sandbox_s <= now]:
            del self._last[sid]
        for name in [n for n, t in self._tenants.items() if not t.users and t.last + self.tenant_s <= now]:
            del self._tenants[name]

    def held(self) -> tuple[int, int]:
        """How many sandboxes and tenants it remembers (for tests)."""
        return len(self._last), len(self._tenants)


async def _until(at: Callable[[], float]) -> None:
    """Sleep until ``at()`` (a monotonic time, read again after each sleep) has passed."""
    while (left := at() - clock.monotonic()) > 0:  # noqa: ASYNC110 - a time, not an event
        await asyncio.sleep(left)
