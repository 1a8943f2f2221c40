"""The turns of ``PATCH …/network`` in one CP process (cp/services/sandbox_network.py): waiting
for them holds no database connection, so they bound what changes may hold of the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from warren.cp.services import sandbox_network as net
from warren.errors import Conflict, ServiceUnavailable, TooManyRequests


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    e = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", pool_size=12, max_overflow=0)
    yield e  # never connects: the turns only read its pool's size
    await e.dispose()


async def _hold(
    engine: AsyncEngine, tenant: str, sid: str, entered: asyncio.Event, go: asyncio.Event
) -> None:
    async with net._turn(engine, tenant, sid):
        entered.set()
        await go.wait()


async def test_a_tenant_has_two_changes_in_flight_and_the_process_a_quarter_of_its_pool(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(net, "UPDATE_TIMEOUT_S", 0.2)
    go = asyncio.Event()
    entered = [asyncio.Event() for _ in range(3)]
    held = [
        asyncio.create_task(_hold(engine, "mallory", "sb-1", entered[0], go)),
        asyncio.create_task(_hold(engine, "mallory", "sb-2", entered[1], go)),
        asyncio.create_task(_hold(engine, "bob", "sb-3", entered[2], go)),
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in entered)), 5)
    with pytest.raises(Conflict):  # the same sandbox: 409 busy at once, as the lock says
        async with net._turn(engine, "mallory", "sb-1"):
            pass
    with pytest.raises(TooManyRequests):  # mallory's third waits for her turn, then gives up
        async with net._turn(engine, "mallory", "sb-4"):
            pass
    with pytest.raises(ServiceUnavailable):  # 12 // 4 = 3 in flight in all
        async with net._turn(engine, "carol", "sb-5"):
            pass
    go.set()
    await asyncio.gather(*held)
    async with net._turn(engine, "mallory", "sb-1"):
        pass
    turns = net._TURNS[engine.sync_engine]
    assert (turns.tenants, turns.users, turns.sandboxes) == ({}, {}, set())
