"""The in-process parts of the abuse limits: the per-team token bucket and the per-address
refusal budget (on the fake clock), the client address behind trusted proxies, and what a
per-address limit counts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from warren.cp.services.rate_limits import (
    RefusalBudget,
    TeamRateLimiter,
    TokenBucket,
    TokenBuckets,
    address_key,
    client_address,
)
from warren.errors import TooManyRequests


def test_bucket_allows_the_burst_then_the_rate(fake_clock: Any) -> None:
    fake_clock.advance(1000)  # a base far from the real clock's jitter
    team = uuid.uuid4()
    bucket = TeamRateLimiter(rate_per_s=10, burst=5)
    base = fake_clock.monotonic()
    for _ in range(5):
        bucket.check(team)
    with pytest.raises(TooManyRequests) as e:
        bucket.check(team)
    assert e.value.retry_after is not None and 0 < e.value.retry_after <= 0.1
    bucket.check(uuid.uuid4())  # another team has its own bucket
    # Refilled at 10/s: 0.35 s later (whatever the real clock added) at least 3 more get in.
    fake_clock.advance(0.35 - (fake_clock.monotonic() - base))
    for _ in range(3):
        bucket.check(team)


def test_a_clock_set_back_does_not_drain_the_bucket(fake_clock: Any) -> None:
    team = uuid.uuid4()
    bucket = TeamRateLimiter(rate_per_s=1, burst=3)
    fake_clock.advance(100)
    bucket.check(team)
    fake_clock.reset()
    bucket.check(team)
    bucket.check(team)


def test_one_bucket_takes_a_cost_or_nothing(fake_clock: Any) -> None:
    bucket = TokenBucket(rate_per_s=2, burst=10)
    assert bucket.take(8) and not bucket.take(3)  # 2 left: a take of 3 is refused whole
    assert bucket.take(2) and not bucket.take()
    fake_clock.advance(1)  # 2 back
    assert bucket.take(2) and not bucket.take()
    fake_clock.reset()  # set back: nothing drained, nothing given
    assert not bucket.take()


def test_rate_zero_is_off() -> None:
    bucket = TeamRateLimiter(rate_per_s=0, burst=1)
    for _ in range(100):
        bucket.check(uuid.uuid4())


def test_idle_buckets_are_forgotten(fake_clock: Any) -> None:
    buckets: TokenBuckets[uuid.UUID] = TokenBuckets(rate_per_s=100, burst=10, max_tracked=50)
    for _ in range(50):
        assert buckets.take(uuid.uuid4()) == 0.0
    fake_clock.advance(1)  # every bucket has refilled
    buckets.take(uuid.uuid4())
    assert len(buckets) == 1


def test_refusals_are_held_past_an_address_budget(fake_clock: Any) -> None:
    budget = RefusalBudget(rate_per_s=2, burst=3, hold_s=3.0)
    assert [budget.hold_for("198.51.100.7") for _ in range(4)] == [0.0, 0.0, 0.0, 3.0]
    assert budget.hold_for("198.51.100.8") == 0.0  # another address has its own budget
    assert budget.hold_for("2001:db8:1:2::1") == 0.0
    fake_clock.advance(0.5)  # one refusal's worth refilled
    assert [budget.hold_for("198.51.100.7") for _ in range(2)] == [0.0, 3.0]
    assert budget.hold_for("") == 0.0  # no address known (not over HTTP): nothing to count


def test_a_hold_of_zero_is_off() -> None:
    budget = RefusalBudget(rate_per_s=2, burst=1, hold_s=0.0)
    assert {budget.hold_for("198.51.100.7") for _ in range(100)} == {0.0}


def test_addresses_past_the_table_share_one_budget(fake_clock: Any) -> None:
    # A flood spread over many /64s: each past the table would otherwise get a fresh burst.
    budget = RefusalBudget(rate_per_s=1, burst=2, hold_s=3.0, max_tracked=4)
    for i in range(4):
        budget.hold_for(f"2001:db8:{i}::1")  # the table is full, no bucket has refilled
    assert len(budget.buckets) == 4
    held = [budget.hold_for(f"2001:db8:{i}::1") for i in range(100, 104)]
    assert held == [0.0, 0.0, 3.0, 3.0]  # four new addresses, one shared burst of 2
    assert len(budget.buckets) == 5  # the four, and the shared one
    fake_clock.advance(10)  # all refilled: a new address gets a bucket of its own again
    assert budget.buckets.room_for(address_key("2001:db8:999::1"))


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    assert client_address("198.51.100.1", ["203.0.113.9"], "") == "198.51.100.1"
    assert client_address("198.51.100.1", ["203.0.113.9"], "10.0.0.0/8") == "198.51.100.1"
    # From the proxy: its own appended hop, not what the client wrote to the left of it.
    assert client_address("10.0.0.5", ["1.2.3.4, 203.0.113.9"], "10.0.0.0/8") == "203.0.113.9"
    assert client_address("10.0.0.5", ["1.2.3.4", "203.0.113.9, 10.0.0.7"], "10.0.0.0/8") == "203.0.113.9"
    assert client_address("10.0.0.5", [], "10.0.0.0/8") == "10.0.0.5"
    assert client_address("::ffff:10.0.0.5", ["203.0.113.9"], "10.0.0.0/8,fd00::/8") == "203.0.113.9"


def test_an_ipv6_client_counts_as_its_64() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
