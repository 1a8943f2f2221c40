"""File transfers' growing flow window (session 14), the rule both ends of ``ReadFileCredit`` and
``WriteFileCredit`` keep (rpc/hostagent.proto; the CP's side is cp/services/file_transfer.py,
the agent's agent/exec_credit.py).

A fixed window caps one transfer at window / round trip (256 KiB: ~25 MiB/s to an agent 10 ms
away). As TCP's receive autotuning, the **receiver** of the bytes decides (:class:`Grower`): a
transfer starts at :data:`BASE`; each time its reader has taken a whole window, the window
doubles if, meanwhile, the reader waited for bytes at least :data:`STARVED_SHARE` of the time
(the window, not the reader, held the transfer back), up to the largest window both ends
allow. A reader that stops takes nothing, so it never grows its window: growth only on
evidence of consumption. Windows never shrink during a transfer.

What a grown window holds is bounded per process (:class:`Budget`): every byte of a window past
``BASE`` is taken from the process's budget and from its key's (the team's) share of it, and
where the process knows the team's owning account (the CP does: ``group``) from that account's
share too (session 16: an owner of 4 teams held a CP's whole budget), on the receiver and again
on the sender, and given back when the transfer ends. A grant the budget
cannot cover grows the window by what it can (or not at all). The ``BASE`` windows themselves
are bounded by the streams a team may hold (``WARREN_MAX_STREAMS_PER_TEAM``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

BASE = 256 << 10  # every transfer's window to start with, and an old peer's for good
GRAIN = 64 << 10  # windows grow in whole messages (the CP and the agent send 64 KiB chunks)
# The share of a window's time the reader spent waiting for bytes, past which the window is
# what held the transfer back. A reader slower than the link finds its bytes waiting and
# never waits; a window-bound one waits about a round trip per window.
STARVED_SHARE = 0.25


class Budget:
    """Bytes of grown windows (past :data:`BASE`) held in this process: at most ``total`` in
    all, ``per_key`` for one key (a team: it cannot take the whole budget while another team
    transfers) and ``per_group`` for one group of keys (the teams of one owning account; a
    transfer without a group is bounded per key only)."""

    def __init__(self, total: int, per_key: int, per_group: int | None = None) -> None:
        self.total, self.per_key = total, per_key
        self.per_group = per_key if per_group is None else per_group
        self.used = 0
        self._by_key: dict[str, int] = {}
        self._by_group: dict[str, int] = {}

    def take(self, key: str, n: int, group: str = "") -> int:
        """Up to ``n`` bytes (whole :data:`GRAIN`s) for ``key`` of ``group``; what was taken,
        maybe 0."""
        held = self._by_key.get(key, 0)
        n = max(0, min(n, self.total - self.used, self.per_key - held))
        if group:
            n = max(0, min(n, self.per_group - self._by_group.get(group, 0)))
        n -= n % GRAIN
        if n:
            self.used += n
            self._by_key[key] = held + n
            if group:
                self._by_group[group] = self._by_group.get(group, 0) + n
        return n

    def give(self, key: str, n: int, group: str = "") -> None:
        _less(self._by_key, key, n)
        if group:
            _less(self._by_group, group, n)
        self.used = max(0, self.used - n)

    def held(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def group_held(self, group: str) -> int:
        return self._by_group.get(group, 0)


def _less(counts: dict[str, int], key: str, n: int) -> None:
    left = counts.get(key, 0) - n
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class _Held:
    """A window of one transfer: ``size`` bytes, what it took from the budget past BASE
    (``key``'s share and ``group``'s, when it has one)."""

    def __init__(self, budget: Budget | None, key: str, largest: int, group: str = "") -> None:
        self.size = self.peak = BASE
        self.capped = 0  # growths the budget cut short (whole or part)
        self.largest = max(BASE, largest)
        self._budget, self._key, self._group, self._extra = budget, key, group, 0

    def _grow_to(self, want: int) -> bool:
        """Take what ``want`` asks past ``size`` from the budget; whether the window grew."""
        want = min(want, self.largest) - self.size
        if want <= 0:
            return False
        got = want if self._budget is None else self._budget.take(self._key, want, self._group)
        if got < want:
            self.capped += 1
        if got <= 0:
            return False
        self._extra += got
        self.size += got
        self.peak = max(self.peak, self.size)
        return True

    def close(self) -> None:
        """The transfer has ended: its grown bytes go back to the budget (once)."""
        if self._budget is not None and self._extra:
            self._budget.give(self._key, self._extra, self._group)
        self._extra = 0


class Grower(_Held):
    """The receiver's window: the reader :meth:`waiting` for bytes and their :meth:`arrived`,
    the bytes it has :meth:`consumed`; the window to grant, when it grows."""

    def __init__(
        self,
        budget: Budget | None,
        key: str,
        largest: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        group: str = "",
    ) -> None:
        super().__init__(budget, key, largest, group)
        self._clock = clock
        self._epoch_at = clock()
        self._got = 0
        self._starved = 0.0
        self._wait_at: float | None = None
        self.sender = BASE  # the window the sender said it keeps to (at most ``size``)

    def sender_keeps(self, n: int) -> None:
        """The sender keeps to ``n`` from now on (its budget may allow less than granted)."""
        self.sender = max(self.sender, min(n, self.size))

    def ack_batch(self, least: int) -> int:
        """How many consumed bytes to acknowledge at once: ``least``, or an eighth of the
        sender's window once it has grown (one acknowledgement per 32 KiB at 8 MiB would be
        ~25 000 messages a second at 800 MB/s). Never more than the sender's half: it waits
        for acknowledgements once it has its window out."""
        return max(least, self.sender // 8)

    def waiting(self) -> None:
        self._wait_at = self._clock()

    def arrived(self) -> None:
        if self._wait_at is not None:
            self._starved += self._clock() - self._wait_at
            self._wait_at = None

    def consumed(self, n: int) -> int | None:
        """``n`` bytes handed on to the reader; the new window if it grows now, else None."""
        self._got += n
        if self._got < self.size:
            return None
        now = self._clock()
        elapsed, starved = now - self._epoch_at, self._starved
        self._epoch_at, self._got, self._starved = now, 0, 0.0
        if self.sender < self.size:  # the sender's budget held it back: a larger grant is moot
            return None
        if starved < elapsed * STARVED_SHARE or not self._grow_to(2 * self.size):
            return None
        return self.size


class Allowance(_Held):
    """The sender's window: the receiver's grants, as far as this end's largest window and its
    own budget allow."""

    def granted(self, n: int) -> int:
        """The receiver grants ``n`` (0: nothing new); the window to keep to now."""
        if n > self.size:
            self._grow_to(n)
        return self.size


__all__ = ["BASE", "GRAIN", "STARVED_SHARE", "Allowance", "Budget", "Grower"]
