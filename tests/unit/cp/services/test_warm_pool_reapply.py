"""A pool size set through the API is not undone by a heartbeat that arrives meanwhile
(services/warm_pools.py): until the new size is stored, the agent's report differs from the
stored (old) size, and applying that again put a pool set to 0 back at its old size (issue 17,
seen in bench/warm_pool.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from warren.cp.services import warm_pools

DEADLINE_S = 30.0


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_no_reapplication_starts_while_a_size_is_being_set() -> None:
    host = uuid.uuid4()
    reported = [{"template": "minimal", "target": 0, "ready": 0}]
    async with warm_pools._sizes_changing(host):
        # No database here: the guard answers before any statement (None would fail at once).
        none: Any = None
        await warm_pools.reapply_after_heartbeat(none, none, None, host, reported)
        assert host not in warm_pools._reapplying
    assert host not in warm_pools._setting


async def test_setting_a_size_waits_for_a_reapplication_under_way() -> None:
    host = uuid.uuid4()
    release = asyncio.Event()
    running = asyncio.create_task(release.wait())
    warm_pools._reapplying[host] = running  # type: ignore[assignment]
    entered = asyncio.Event()

    async def set_size() -> None:
        async with warm_pools._sizes_changing(host):
            entered.set()

    setter = asyncio.create_task(set_size())
    try:
        await _settle()
        assert not entered.is_set()  # the old sizes' application ends first
        release.set()
        await asyncio.wait_for(setter, DEADLINE_S)
        assert entered.is_set()
    finally:
        warm_pools._reapplying.pop(host, None)
        setter.cancel()
        running.cancel()
