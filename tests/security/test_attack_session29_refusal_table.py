"""Session 29's last pass: the refusal budget's table under a flood spread over many addresses
(docs/security.md §24, ``services/rate_limits.TokenBuckets``).

The budget keeps at most 10,000 addresses; a new one past that looks for buckets that have
refilled, a pass over the whole table. While every tracked address keeps being refused nothing
is forgotten, and each refusal from yet another address (an attacker with an IPv6 /48 has 65,536
/64s) paid its own pass: ~0.7 ms of the CP's loop at 10,000 keys, more than the refusal itself.
Now a pass that leaves the table full is not repeated for a second.

Driven the way the CP's middleware drives it (one ``hold_for`` per refusal, production sizes),
on the fake clock; what is counted is the passes over the table, not time.
"""

from __future__ import annotations

from typing import Any

import pytest

from warren.cp.services import rate_limits
from warren.cp.services.rate_limits import RefusalBudget, TokenBuckets

TRACKED = 10_000
NEW = 5_000


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the table was rebuilt (a pass over it), whatever the code calls it."""
    passes = [0]
    forget = TokenBuckets._forget_idle

    def counted(self: TokenBuckets[Any], now: float) -> None:
        before = self._buckets
        forget(self, now)
        passes[0] += self._buckets is not before

    monkeypatch.setattr(rate_limits.TokenBuckets, "_forget_idle", counted)
    return passes


def test_a_flood_spread_over_new_addresses_does_not_pay_a_pass_each(
    fake_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = RefusalBudget(rate_per_s=2.0, burst=120, hold_s=3.0, max_tracked=TRACKED)
    for i in range(TRACKED):  # every /64 of the attacker's refused once: the table is full
        budget.hold_for(f"2001:db8:{i >> 8:x}:{i & 0xFF:x}::1")
    passes = _count_passes(monkeypatch)
    for i in range(NEW):  # yet more /64s, within the same second
        budget.hold_for(f"2001:db9:{i >> 8:x}:{i & 0xFF:x}::1")
    assert passes[0] <= 1, passes  # before: one pass per new address (5000)
    assert len(budget.buckets) <= TRACKED + 1  # the table stays bounded (the shared budget)
    fake_clock.advance(2.0)  # a second later one pass may look again
    budget.hold_for("2001:dba::1")
    assert passes[0] <= 2, passes


def test_the_table_still_frees_room_once_buckets_refill(fake_clock: Any) -> None:
    budget = RefusalBudget(rate_per_s=2.0, burst=120, hold_s=3.0, max_tracked=100)
    for i in range(100):
        budget.hold_for(f"198.51.100.{i}")
    assert not budget.buckets.room_for("203.0.113.1")  # full, nobody refilled
    fake_clock.advance(61)  # 120 refusals at 2 a second: every bucket full again
    assert budget.buckets.room_for("203.0.113.1")
    assert len(budget.buckets) == 0
