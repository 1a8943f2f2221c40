"""The CP's per-replica byte budget (services/budget.py): reservations that fit pass at once,
others wait in order, a waiter gives up with 503 server_busy, and nothing leaks on cancel."""

from __future__ import annotations

import asyncio

import pytest

from warren.cp.services.budget import ByteBudget
from warren.cp.services.strict import StrictBody
from warren.errors import ServiceUnavailable


async def test_fits_waits_in_order_and_releases() -> None:
    b = ByteBudget(100)
    await b.acquire(60)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await b.acquire(n)
        order.append(name)

    first = asyncio.create_task(take("first", 50))
    await asyncio.sleep(0)
    second = asyncio.create_task(take("second", 10))  # would fit, but waits its turn
    await asyncio.sleep(0)
    assert order == [] and b.used == 60
    b.release(60)
    await asyncio.gather(first, second)
    assert order == ["first", "second"] and b.used == 60


async def test_an_oversized_reservation_runs_alone() -> None:
    b = ByteBudget(100)
    await b.acquire(500)  # alone: allowed
    assert b.used == 500
    with pytest.raises(ServiceUnavailable) as ei:
        await b.acquire(1, wait_s=0.05)
    assert ei.value.code == "server_busy" and getattr(ei.value, "retry_after", None)
    b.release(500)
    assert b.used == 0


async def test_the_process_budget_waits_as_long_as_its_setting_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WARREN_UNARY_BUDGET_WAIT_S`` (a test platform sets it short) is each waiter's limit."""
    from warren.config import get_settings
    from warren.cp.services import budget

    monkeypatch.setenv("WARREN_UNARY_BUDGET_WAIT_S", "0.05")
    monkeypatch.setattr(budget, "_budget", None)
    get_settings.cache_clear()
    try:
        b = budget.unary_budget()
        assert b.wait_s == 0.05
        await b.acquire(b.capacity)
        with pytest.raises(ServiceUnavailable):
            await b.acquire(1)
        assert b.used == b.capacity
    finally:
        get_settings.cache_clear()  # monkeypatch puts the process's budget back


async def test_cancelled_waiter_leaves_nothing_behind() -> None:
    b = ByteBudget(10)
    await b.acquire(10)
    waiter = asyncio.create_task(b.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    b.release(10)
    assert b.used == 0
    await b.acquire(10)  # the whole budget is free again


class _Body(StrictBody):
    nul_ok_fields = frozenset({"data"})
    text: str = ""
    data: str = ""
    items: list[str] = []
    env: dict[str, str] = {}
    n: int = 0


@pytest.mark.parametrize(
    "fields",
    [{"text": "\udfff"}, {"items": ["ok", "\ud800"]}, {"env": {"\udfff": "v"}}, {"env": {"k": "a\x00"}},
     {"text": "nul\x00"}, {"n": 2**63}, {"n": -(2**63) - 1}, {"unknown": 1}],
)  # fmt: skip
def test_strict_body_refuses_what_cannot_be_stored(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _Body.model_validate(fields)


def test_strict_body_accepts_the_rest() -> None:
    b = _Body.model_validate({"text": "héllo €", "data": "a\x00b", "n": 2**63 - 1, "items": ["x"]})
    assert b.data == "a\x00b" and b.n == 2**63 - 1


async def test_one_key_holds_at_most_its_share_and_holds_up_no_other() -> None:
    """Session 22: a unary exec's output is held while its command runs; one tenant's held the
    whole budget and every other team's waited and was refused (test_attack_session22_unary_share)."""
    assert ByteBudget(100).share == 75  # the default: three quarters
    b = ByteBudget(100, wait_s=0.05, share=50)
    await b.acquire(30, key="a")
    await b.acquire(20, key="a")
    with pytest.raises(ServiceUnavailable):
        await b.acquire(1, key="a")  # past its share: it waits, then 503
    waiting_a = asyncio.create_task(b.acquire(10, key="a", wait_s=5))
    await asyncio.sleep(0)
    await b.acquire(40, key="b")  # not behind a's waiter: it is held back by a's own share only
    assert b.held("a") == 50 and b.held("b") == 40 and b.used == 90
    b.release(20, "a")
    await waiting_a
    assert b.held("a") == 40 and b.used == 80


async def test_a_reservation_without_a_key_takes_no_share() -> None:
    b = ByteBudget(100)
    await b.acquire(80)
    assert b.used == 80 and b.held("") == 0
    b.release(80)
    await b.acquire(60, key="a")  # a key holding nothing may take more than its share, alone
    assert b.held("a") == 60
    b.release(60, "a")
    assert b.used == 0 and b.held("a") == 0
