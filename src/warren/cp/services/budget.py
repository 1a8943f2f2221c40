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

A reservation may name whose share it takes (``key``, :func:`share_key`: the team's owning
account, or the team when it has none; unary execs and E2B listings name one): one key holds at
most ``share`` (three quarters of the budget: six unary execs' full outputs at the default
sizes, so five at once of one tenant still fit whole, while a lone attacker leaves the others a
quarter), and a waiter held back by its own key's share waits without holding up anyone behind
it. (At half, five of one tenant's execs growing at once to their 16 MiB could each hold part
and all wait for the share, until 503s: CI, session 22.) Unary uploads name no key: one may be
100 MiB, more than a share, and a lone upload would wait on its own share.

Without a share a unary exec's output was held for as long as its
command ran (up to an hour): one tenant's eight commands that printed 16 MiB and slept held the
whole budget, and every other team's unary execs waited ``wait_s`` and were refused 503 for
that hour (tests/security/test_attack_session22_unary_share.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from warren.config import get_settings
from warren.cp.services.context import AuthContext
from warren.errors import ServiceUnavailable

MiB = 1024 * 1024
WAIT_S = 30.0


class ByteBudget:
    def __init__(self, capacity: int, wait_s: float = WAIT_S, share: int | None = None) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.share = capacity * 3 // 4 if share is None else share
        self.used = 0
        self._by_key: dict[str, int] = {}
        self._waiters: collections.deque[tuple[int, str, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.capacity or self.used == 0

    def _share_fits(self, n: int, key: str) -> bool:
        held = self._by_key.get(key, 0) if key else 0
        return not key or held + n <= self.share or held == 0

    def held(self, key: str) -> int:
        return self._by_key.get(key, 0)

    async def acquire(self, n: int, *, wait_s: float | None = None, key: str = "") -> None:
        """Reserve ``n`` bytes (``key``'s share, when it names one); 503 past the wait."""
        if not self._waiters and self._fits(n) and self._share_fits(n, key):
            self._take(n, key)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, key, fut)
        self._waiters.append(entry)
        self._wake()
        try:
            async with asyncio.timeout(self.wait_s if wait_s is None else wait_s):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():
                self.release(n, key)  # granted just as we gave up: give it back
            if isinstance(e, TimeoutError):
                raise self._busy() from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._wake()

    def release(self, n: int, key: str = "") -> None:
        self.used = max(0, self.used - n)
        if key:
            left = self._by_key.get(key, 0) - n
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)
        self._wake()

    def _take(self, n: int, key: str) -> None:
        self.used += n
        if key:
            self._by_key[key] = self._by_key.get(key, 0) + n

    def _wake(self) -> None:
        """Grant waiters in order; one held back by its own key's share is passed over, the
        first that does not fit the budget stops the rest (no small one overtakes it)."""
        for entry in list(self._waiters):
            n, key, fut = entry
            if fut.done():
                self._waiters.remove(entry)
                continue
            if not self._share_fits(n, key):
                continue
            if not self._fits(n):
                return
            self._waiters.remove(entry)
            self._take(n, key)
            fut.set_result(None)

    def _busy(self) -> ServiceUnavailable:
        err = ServiceUnavailable(
            "this control plane is holding as much unary exec output and upload data as it may "
            f"({self.capacity // MiB} MiB), or this team's share of it; retry shortly, or use the "
            "streaming routes",
            code="server_busy",
        )
        err.retry_after = 2  # type: ignore[attr-defined]  # becomes Retry-After (http_errors)
        return err

    @contextlib.asynccontextmanager
    async def hold(self, n: int, key: str = "") -> AsyncIterator[None]:
        await self.acquire(n, key=key)
        try:
            yield
        finally:
            self.release(n, key)


def share_key(ctx: AuthContext) -> str:
    """Whose share of the budget a request takes: its team's owning account's (all the teams
    one account owns together), else its team's (the platform team has no owner)."""
    return str(ctx.owner_id or ctx.team_id or "")


_budget: ByteBudget | None = None


def unary_budget() -> ByteBudget:
    """This process's budget, ``WARREN_UNARY_BUDGET_MB`` (default 128 MiB), waited for up to
    ``WARREN_UNARY_BUDGET_WAIT_S`` (default 30 s)."""
    global _budget
    if _budget is None:
        settings = get_settings()
        _budget = ByteBudget(settings.unary_budget_mb * MiB, settings.unary_budget_wait_s)
    return _budget


__all__ = ["ByteBudget", "share_key", "unary_budget"]
