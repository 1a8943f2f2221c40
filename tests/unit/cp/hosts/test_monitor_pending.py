"""D19: a control plane killed mid-create leaves `pending` records. A host that reports the
creates it has in flight lets the monitor settle the abandoned ones after a short grace instead
of after the 11 minutes any create could take (real database, fake clock, fake agent)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.services import audit

from .conftest import Rows
from .test_monitor import FakeAgent, FakePool

GRACE_S = 60.0


class ReportingAgent(FakeAgent):
    """An agent that also says which creates it has in flight (``creating``)."""

    def __init__(self) -> None:
        super().__init__()
        self.creating: set[str] = set()
        self.reports = True

    async def ListSandboxes(self, request: Any, *, timeout: float | None = None) -> Any:
        resp = await super().ListSandboxes(request, timeout=timeout)
        resp.creating_sandbox_ids.extend(sorted(self.creating))
        resp.reports_creating = self.reports
        return resp


class ReportingPool(FakePool):
    def get(self, host: Any) -> ReportingAgent:
        agent = self.agents.setdefault(host["id"], ReportingAgent())
        assert isinstance(agent, ReportingAgent)
        return agent


async def _beat(engine: AsyncEngine, host: Any, fake_clock: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE hosts SET last_heartbeat_at = :t WHERE id = :id"),
            {"t": fake_clock.now(), "id": host},
        )


async def test_abandoned_creates_settle_after_the_grace_and_in_flight_ones_wait(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    made, lost, busy = [await rows.sandbox(team, h, "pending") for _ in range(3)]
    pool = ReportingPool()
    agent = pool.get({"id": h})
    agent.alive = {ids.sandbox_id(made)}  # the agent finished it; its CP died before recording it
    agent.creating = {ids.sandbox_id(busy)}  # e.g. still queued behind other creates
    m = HostMonitor(engine, pool, audit.record, stale_s=90, pending_grace_s=GRACE_S)  # type: ignore[arg-type]

    fake_clock.advance(GRACE_S - 5)
    await _beat(engine, h, fake_clock)
    await m.run_once()
    assert [await rows.status(s) for s in (made, lost, busy)] == ["pending"] * 3

    fake_clock.advance(10)
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert r.to_running == [ids.sandbox_id(made)] and r.to_error == [ids.sandbox_id(lost)]
    assert [await rows.status(s) for s in (made, lost, busy)] == ["running", "error", "pending"]
    assert await rows.end_reason(lost) == "create_failed"  # an abandoned create the host never made
    async with engine.connect() as conn:
        started = (
            await conn.execute(sa.select(sandboxes.c.started_at).where(sandboxes.c.id == made))
        ).scalar()
    assert started is not None

    # Its create finishes on the host later: then it is settled like the first.
    agent.creating.clear()
    agent.alive.add(ids.sandbox_id(busy))
    fake_clock.advance(1)
    await _beat(engine, h, fake_clock)
    r = await m.run_once()
    assert r.to_running == [ids.sandbox_id(busy)]


async def test_a_create_that_reaches_the_host_between_the_two_answers_is_left_alone(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    late = await rows.sandbox(team, h, "pending")
    pool = ReportingPool()
    agent = pool.get({"id": h})

    calls = 0
    real_list = agent.ListSandboxes

    async def list_sandboxes(request: Any, *, timeout: float | None = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second ListSandboxes of the pass: the create has just arrived
            agent.creating.add(ids.sandbox_id(late))
        return await real_list(request, timeout=timeout)

    agent.ListSandboxes = list_sandboxes  # type: ignore[method-assign]
    fake_clock.advance(GRACE_S + 1)
    await _beat(engine, h, fake_clock)
    r = await HostMonitor(engine, pool, audit.record, stale_s=90, pending_grace_s=GRACE_S).run_once()  # type: ignore[arg-type]
    assert calls == 2 and not r.to_error
    assert await rows.status(late) == "pending"


async def test_an_agent_that_does_not_report_creates_gets_the_long_rule(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """An older agent says nothing about creates in flight: its empty list proves nothing."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    sb = await rows.sandbox(team, h, "pending")
    pool = ReportingPool()
    pool.get({"id": h}).reports = False
    fake_clock.advance(GRACE_S * 3)
    await _beat(engine, h, fake_clock)
    r = await HostMonitor(engine, pool, audit.record, stale_s=90, pending_grace_s=GRACE_S).run_once()  # type: ignore[arg-type]
    assert not r.to_error and await rows.status(sb) == "pending"
