"""The resolvers' shared upstream count has a per-tenant share (agent/dns_proxy.py ``Budget``)."""

from __future__ import annotations

import contextlib

from warren.agent.dns_proxy import Budget


def test_one_tenant_takes_at_most_its_share_and_leaves_the_rest() -> None:
    b = Budget(limit=8)
    assert b.per_tenant == 4
    with contextlib.ExitStack() as stack:
        got_a = [stack.enter_context(b.take("a")) for _ in range(6)]
        assert got_a == [True] * 4 + [False] * 2 and b.held("a") == 4
        got_b = [stack.enter_context(b.take("b")) for _ in range(5)]
        assert got_b == [True] * 4 + [False] and b.used == 8
        assert not stack.enter_context(b.take())  # the whole count is held
    assert b.used == 0 and b.held("a") == 0 and b.held("b") == 0


def test_without_a_tenant_only_the_count_bounds() -> None:
    b = Budget(limit=4)
    with contextlib.ExitStack() as stack:
        assert [stack.enter_context(b.take()) for _ in range(5)] == [True] * 4 + [False]
    assert b.used == 0
