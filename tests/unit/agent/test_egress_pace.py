"""agent/egress_pace.py: the spacing of one agent's egress rule changes, per sandbox and per
tenant. Spacing is asserted from below only (a loaded machine only spaces them further)."""

from __future__ import annotations

import asyncio
import itertools
import time

from warren.agent.egress_pace import ChangePace

SB_S, TENANT_S = 0.2, 0.05
Log = list[tuple[str, str, float, float]]


async def _applied(pace: ChangePace, log: Log, sid: str, tenant: str) -> None:
    async with pace.turn(sid, tenant):
        start = time.monotonic()
        await asyncio.sleep(0.005)  # the application
        log.append((sid, tenant, start, time.monotonic()))


async def test_one_sandbox_s_changes_are_spaced_by_its_interval() -> None:
    pace, log = ChangePace(SB_S, TENANT_S), Log()
    for _ in range(4):
        await _applied(pace, log, "sb-a", "t1")
    for prev, nxt in itertools.pairwise(log):
        assert nxt[2] - prev[3] >= SB_S - 0.01, log


async def test_a_tenant_s_sandboxes_take_turns_and_other_tenants_do_not_wait_for_them() -> None:
    pace, log = ChangePace(SB_S, TENANT_S), Log()
    mine = [_applied(pace, log, f"sb-{i}", "t1") for i in range(6)]
    await asyncio.gather(*mine, _applied(pace, log, "sb-other", "t2"))
    t1 = sorted((e for e in log if e[1] == "t1"), key=lambda e: e[2])
    assert len(t1) == 6
    for prev, nxt in itertools.pairwise(t1):
        assert nxt[2] - prev[3] >= TENANT_S - 0.01, t1  # one at a time, spaced
    other = next(e for e in log if e[1] == "t2")
    assert other[2] < t1[-1][2], "the other tenant waited behind t1's whole queue"


async def test_a_cancelled_waiter_holds_nobody_back_and_nothing_is_kept() -> None:
    pace, log = ChangePace(SB_S, TENANT_S), Log()
    await _applied(pace, log, "sb-a", "t1")
    waiting = asyncio.create_task(_applied(pace, log, "sb-a", "t1"))  # within sb-a's interval
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await _applied(pace, log, "sb-b", "t1")  # the tenant's turn was not kept by the cancelled one
    assert [e[0] for e in log] == ["sb-a", "sb-b"]
    await asyncio.sleep(SB_S + 0.05)
    await _applied(pace, log, "sb-c", "t2")
    assert pace.held() == (1, 1)  # only what the last change still delays
