"""The monitor's egress collection (cp/hosts/usage.py) against a real database: each reading
adds its growth once, a counter that started over counts from zero again, a destroyed
sandbox's final reading lands on its stopped row, and an agent changes only its own host's rows
with well-formed readings."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.usage import readings, record_egress
from warren.rpc import hostagent_pb2 as pb

from .conftest import Rows


def answer(
    live: dict[uuid.UUID, int | None], ended: dict[uuid.UUID, int] | None = None
) -> pb.ListSandboxesResponse:
    resp = pb.ListSandboxesResponse()
    for u, n in live.items():
        info = resp.sandboxes.add(sandbox_id=ids.sandbox_id(u), status="running")
        if n is not None:
            info.egress_bytes = n
    for u, n in (ended or {}).items():
        resp.ended_egress.add(sandbox_id=ids.sandbox_id(u), egress_bytes=n)
    return resp


async def apply(engine: AsyncEngine, host: uuid.UUID, resp: pb.ListSandboxesResponse) -> None:
    async with engine.begin() as conn:
        await record_egress(conn, host, resp)


async def totals(engine: AsyncEngine, *sbs: uuid.UUID) -> list[int]:
    async with engine.connect() as conn:
        got = dict((await conn.execute(sa.select(sandboxes.c.id, sandboxes.c.egress_bytes))).all())
    return [int(got[s]) for s in sbs]


async def test_growth_is_added_once_and_a_restarted_counter_counts_again(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    a, b = await rows.sandbox(team, host), await rows.sandbox(team, host)
    await apply(engine, host, answer({a: 1000, b: None}))  # b's counter could not be read
    assert await totals(engine, a, b) == [1000, 0]
    await apply(engine, host, answer({a: 1000, b: 50}))  # the same reading again: nothing
    await apply(engine, host, answer({a: 1500, b: 50}))
    assert await totals(engine, a, b) == [1500, 50]
    await apply(engine, host, answer({a: 200, b: 50}))  # a's counter started over
    assert await totals(engine, a, b) == [1700, 50]
    # b destroyed: its final reading, reported for a while, lands once on its stopped row.
    async with engine.begin() as conn:
        await conn.execute(sandboxes.update().where(sandboxes.c.id == b).values(status="stopped"))
    for _ in range(3):
        await apply(engine, host, answer({a: 300}, {b: 80}))
    assert await totals(engine, a, b) == [1800, 80]


async def test_an_agent_moves_only_its_own_host_s_rows(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    mine, other = await rows.host(admin), await rows.host(admin)
    theirs = await rows.sandbox(team, other)
    await apply(engine, mine, answer({theirs: 10**9}, {theirs: 10**9}))
    assert await totals(engine, theirs) == [0]


def test_readings_leave_out_what_is_not_a_sandbox_or_a_count() -> None:
    good, dup = ids.new_uuid(), ids.new_uuid()
    resp = answer({good: 7, dup: 5}, {dup: 9})
    resp.sandboxes.add(sandbox_id="step-build-1", egress_bytes=3)  # a build step's
    resp.sandboxes.add(sandbox_id=ids.sandbox_id(ids.new_uuid()), egress_bytes=-1)
    resp.ended_egress.add(sandbox_id="../../etc", egress_bytes=4)
    assert readings(resp) == {good: 7, dup: 9}
