"""HostMonitor logic against a real database with a fake clock and a fake agent."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import make_engine
from warren.cp.db.tables import audit_logs, sandboxes
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.services import audit
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb

from .conftest import Rows


class FakeAgent:
    """Answers ListSandboxes like the real agent: the auto-paused list is cleared on read.
    It stands in for a ``HostClient`` and for its stub (``agent.stub`` is the agent itself)."""

    def __init__(self) -> None:
        self.stub = self
        self.alive: set[str] = set()
        self.paused: set[str] = set()
        self.auto_paused: set[str] = set()
        self.fail = False
        self.delay = 0.0
        self.calls = 0
        self.destroyed: list[str] = []
        self.late: set[str] = set()  # listed from the second ListSandboxes on

    async def ListSandboxes(self, request: Any, *, timeout: float | None = None) -> Any:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise AgentError("host agent unreachable", rpc_code="UNAVAILABLE")
        auto, self.auto_paused = self.auto_paused, set()
        alive, self.alive = self.alive, self.alive | self.late  # the late ones: next answer on
        return pb.ListSandboxesResponse(
            sandboxes=[pb.SandboxInfo(sandbox_id=s, status="running") for s in sorted(alive)]
            + [pb.SandboxInfo(sandbox_id=s, status="paused") for s in sorted(self.paused)],
            auto_paused_sandbox_ids=sorted(auto),
        )

    async def destroy_best_effort(self, sandbox_id: str, *, why: str) -> None:
        self.destroyed.append(sandbox_id)
        self.alive.discard(sandbox_id)
        self.paused.discard(sandbox_id)


class FakePool:
    def __init__(self) -> None:
        self.agents: dict[uuid.UUID, FakeAgent] = {}

    def get(self, host: Mapping[str, Any]) -> FakeAgent:
        return self.agents.setdefault(host["id"], FakeAgent())


def monitor(engine: AsyncEngine, pool: FakePool) -> HostMonitor:
    return HostMonitor(engine, pool, audit.record, stale_s=90)  # type: ignore[arg-type]


async def _audits(engine: AsyncEngine, action: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(audit_logs).where(audit_logs.c.action == action)
                )
            ).scalar_one()
        )


async def test_stale_heartbeat_marks_host_unreachable_and_sandboxes_missing(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    fresh = await rows.host(admin)
    sb = {
        st: await rows.sandbox(team, h, st) for st in ("running", "starting", "pending", "paused", "stopped")
    }
    other = await rows.sandbox(team, fresh)
    pool = FakePool()
    pool.get({"id": fresh}).alive = {ids.sandbox_id(other)}
    pool.get({"id": h}).alive = {ids.sandbox_id(sb["running"])}
    pool.get({"id": h}).paused = {ids.sandbox_id(sb["paused"])}  # listed (else it died: stopped)
    m = monitor(engine, pool)

    fake_clock.advance(89)
    r = await m.run_once()
    assert not r.marked_down and await rows.host_status(h) == "online"

    fake_clock.advance(2)  # now 91 s since the last heartbeat
    async with engine.begin() as conn:  # the other host keeps beating
        await conn.execute(
            sa.text("UPDATE hosts SET last_heartbeat_at = :t WHERE id = :id"),
            {"t": fake_clock.now(), "id": fresh},
        )
    r = await m.run_once()
    assert r.marked_down == [ids.host_id(h)]
    assert await rows.host_status(h) == "unreachable"
    assert await rows.host_status(fresh) == "online"
    for st in ("running", "starting", "pending"):
        assert await rows.status(sb[st]) == "missing"
    assert await rows.status(sb["paused"]) == "paused"
    assert await rows.status(sb["stopped"]) == "stopped"
    assert await rows.status(other) == "running"
    # No active phase for a stale host, and no second transition on the next pass.
    calls = pool.get({"id": h}).calls
    r = await m.run_once()
    assert not r.marked_down and pool.get({"id": h}).calls == calls
    assert await _audits(engine, "marked_down") == 1


async def test_active_phase_reconciles_with_the_agent(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    back = await rows.sandbox(team, h, "missing")
    gone = await rows.sandbox(team, h, "missing")
    missing_auto = await rows.sandbox(team, h, "missing")
    alive = await rows.sandbox(team, h, "running")
    orphan = await rows.sandbox(team, h, "running")
    auto = await rows.sandbox(team, h, "running")
    paused = await rows.sandbox(team, h, "paused")
    still_paused = await rows.sandbox(team, h, "paused")
    resumed = await rows.sandbox(team, h, "paused")  # listed running: a resume under way
    listed_paused = await rows.sandbox(team, h, "running")
    listed_auto = await rows.sandbox(team, h, "running")
    pool = FakePool()
    agent = pool.get({"id": h})
    agent.alive = {ids.sandbox_id(back), ids.sandbox_id(alive), ids.sandbox_id(resumed)}
    # Our runtime keeps paused sandboxes listed; the auto-paused list may name them too.
    agent.paused = {ids.sandbox_id(listed_paused), ids.sandbox_id(listed_auto), ids.sandbox_id(still_paused)}
    agent.auto_paused = {ids.sandbox_id(auto), ids.sandbox_id(missing_auto), ids.sandbox_id(listed_auto)}
    fake_clock.advance(1)
    await monitor(engine, pool).run_once()
    assert await rows.status(back) == "running"
    assert await rows.status(gone) == "stopped"
    assert await rows.status(missing_auto) == "paused"  # DESIGN §4: never stopped
    assert await rows.status(alive) == "running"
    assert await rows.status(orphan) == "stopped"
    assert await rows.status(auto) == "paused"
    assert await rows.status(paused) == "stopped"  # gone from its host: it died while paused
    assert await rows.status(still_paused) == "paused"
    assert await rows.status(resumed) == "paused"  # the resume's own update says running
    assert await rows.status(listed_paused) == "paused"
    assert await rows.status(listed_auto) == "paused"
    assert await _audits(engine, "pause") == 4
    # Why each ended (end_reasons): back from an unreachable host without it, or its agent lost it.
    ended = [await rows.end_reason(s) for s in (gone, orphan, paused, alive, auto)]
    assert ended == ["host_lost", "gone_from_host", "gone_from_host", None, None]


async def test_failed_list_changes_nothing(engine: AsyncEngine, rows: Rows, fake_clock: Any) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    s = await rows.sandbox(team, h, "running")
    pool = FakePool()
    pool.get({"id": h}).fail = True
    fake_clock.advance(1)
    await monitor(engine, pool).run_once()
    assert await rows.status(s) == "running"
    assert await rows.host_status(h) == "online"


async def test_sandbox_changed_while_listing_is_left_alone(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    s = await rows.sandbox(team, h, "pending")

    class CreateFinishesMeanwhile(FakeAgent):
        """The create finishes while the agent is asked (so after the monitor's ``asked_at``,
        whatever the timing), and the answer predates it: the sandbox is not listed. (Timed
        with sleeps, a loaded machine once let the create finish before the monitor asked.)"""

        async def ListSandboxes(self, request: Any, *, timeout: float | None = None) -> Any:
            if self.calls == 0:
                fake_clock.advance(1)
                async with engine.begin() as conn:
                    await conn.execute(
                        sandboxes.update()
                        .where(sandboxes.c.id == s)
                        .values(status="running", last_updated=fake_clock.now())
                    )
            return await super().ListSandboxes(request, timeout=timeout)

    pool = FakePool()
    pool.agents[h] = CreateFinishesMeanwhile()
    await monitor(engine, pool).run_once()
    assert pool.agents[h].calls >= 1
    assert await rows.status(s) == "running"


async def test_two_replicas_never_double_transition(
    db_url: str, engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """Two monitors on two engines (as two CP processes would be) run every pass concurrently."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    other = make_engine(db_url, pool_size=5)
    try:
        for round_ in range(5):
            h = await rows.host(admin)
            running = [await rows.sandbox(team, h, "running") for _ in range(3)]
            pool_a, pool_b = FakePool(), FakePool()
            # Both replicas reach the same agent (one shared fake), which clears its list on read.
            shared = FakeAgent()
            shared.delay = 0.05
            pool_a.agents[h] = pool_b.agents[h] = shared
            shared.alive = {ids.sandbox_id(running[0])}
            shared.auto_paused = {ids.sandbox_id(running[1])}
            fake_clock.advance(1)
            a, b = monitor(engine, pool_a), monitor(other, pool_b)
            await asyncio.gather(a.run_once(), b.run_once())
            assert await rows.status(running[0]) == "running"
            assert await rows.status(running[1]) == "paused", f"round {round_}"
            assert await rows.status(running[2]) == "stopped"
            assert await rows.end_reason(running[2]) == "gone_from_host"
            assert await _audits(engine, "pause") == round_ + 1

            # Then the host goes silent: exactly one replica marks it down.
            fake_clock.advance(120)
            ra, rb = await asyncio.gather(a.run_once(), b.run_once())
            assert len(ra.marked_down) + len(rb.marked_down) >= 1
            assert await rows.host_status(h) == "unreachable"
            assert await rows.status(running[0]) == "missing"
        marked = await _audits(engine, "marked_down")
        async with engine.connect() as conn:
            per_host = (
                await conn.execute(
                    sa.select(audit_logs.c.resource_id, sa.func.count())
                    .where(audit_logs.c.action == "marked_down")
                    .group_by(audit_logs.c.resource_id)
                )
            ).all()
        assert all(n == 1 for _, n in per_host)
        assert marked == len(per_host)
    finally:
        await other.dispose()


@pytest.mark.parametrize("status", ["pending", "offline"])
async def test_pending_and_offline_hosts_are_ignored(
    engine: AsyncEngine, rows: Rows, fake_clock: Any, status: str
) -> None:
    admin = await rows.user(admin=True)
    h = await rows.host(admin, status=status, heartbeat_age_s=None)
    fake_clock.advance(1000)
    r = await monitor(engine, FakePool()).run_once()
    assert not r.marked_down and await rows.host_status(h) == status


async def test_active_checks_are_bounded(engine: AsyncEngine, rows: Rows, fake_clock: Any) -> None:
    """Each check holds a database connection across its agent call: no more than
    ``concurrency`` run at once, and every online host is still checked in the pass."""
    admin = await rows.user(admin=True)
    hosts = [await rows.host(admin) for _ in range(5)]
    in_flight = peak = 0
    two_in_flight = asyncio.Event()

    class SlowAgent(FakeAgent):
        async def ListSandboxes(self, request: Any, *, timeout: float | None = None) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight >= 2:
                two_in_flight.set()
            try:
                # Held until a second check is in flight (or 30 s, if the bound let only one
                # run), so the peak does not depend on how fast the database answers (2 s was
                # not always enough for the second check's connection on a loaded machine).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(two_in_flight.wait(), 30)
                await asyncio.sleep(0.01)
                return await super().ListSandboxes(request, timeout=timeout)
            finally:
                in_flight -= 1

    pool = FakePool()
    for h in hosts:
        pool.agents[h] = SlowAgent()
    m = HostMonitor(engine, pool, audit.record, stale_s=90, concurrency=2)  # type: ignore[arg-type]
    await m.run_once()
    assert all(pool.agents[h].calls == 1 for h in hosts)
    assert peak == 2


async def test_abandoned_pending_creates_are_settled(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """A `pending` record older than any create can take (its CP died mid-create): on the host →
    running, not there → error. A younger one may still be in flight and is left alone."""
    from warren.cp.hosts.monitor import ABANDONED_PENDING_S

    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    made, lost = await rows.sandbox(team, h, "pending"), await rows.sandbox(team, h, "pending")
    pool = FakePool()
    pool.get({"id": h}).alive = {ids.sandbox_id(made)}

    async def beat() -> None:  # the host stays healthy while the clock moves
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE hosts SET last_heartbeat_at = :t WHERE id = :id"),
                {"t": fake_clock.now(), "id": h},
            )

    fake_clock.advance(ABANDONED_PENDING_S - 5)
    await beat()
    young = await rows.sandbox(team, h, "pending")
    await monitor(engine, pool).run_once()
    assert [await rows.status(s) for s in (made, lost, young)] == ["pending"] * 3

    fake_clock.advance(10)
    await beat()
    r = await monitor(engine, pool).run_once()
    assert r.to_running == [ids.sandbox_id(made)] and r.to_error == [ids.sandbox_id(lost)]
    assert [await rows.status(s) for s in (made, lost, young)] == ["running", "error", "pending"]


async def test_sandboxes_a_host_runs_with_a_final_record_are_destroyed_there(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """Destroyed (or their team deleted) while their host was unreachable, or a create the CP
    gave up on: the host still runs them, nobody can reach them, so they go. A sandbox with no
    record at all, or whose record names another host, is not this monitor's to destroy."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h, other = await rows.host(admin), await rows.host(admin)
    stopped = await rows.sandbox(team, h, "stopped")
    errored = await rows.sandbox(team, h, "error")
    running = await rows.sandbox(team, h, "running")
    elsewhere = await rows.sandbox(team, other, "stopped")
    pool = FakePool()
    agent = pool.get({"id": h})
    unknown = ids.sandbox_id(uuid.uuid4())
    agent.alive = {ids.sandbox_id(x) for x in (stopped, running, elsewhere)} | {unknown, "not-an-id"}
    agent.paused = {ids.sandbox_id(errored)}
    fake_clock.advance(1)
    result = await monitor(engine, pool).run_once()
    assert sorted(agent.destroyed) == sorted([ids.sandbox_id(stopped), ids.sandbox_id(errored)])
    assert sorted(result.destroyed) == sorted(agent.destroyed)
    assert await rows.status(running) == "running"
    assert await rows.status(stopped) == "stopped" and await rows.status(errored) == "error"


async def test_a_sandbox_missing_from_the_first_answer_is_asked_about_again(
    engine: AsyncEngine, rows: Rows, fake_clock: Any
) -> None:
    """Replicas' clocks differ: a create that finished just after the host answered can look
    older than the answer. Before a record is stopped the host is asked once more."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    h = await rows.host(admin)
    just_made = await rows.sandbox(team, h, "running")
    gone = await rows.sandbox(team, h, "running")
    pool = FakePool()
    agent = pool.get({"id": h})
    agent.late = {ids.sandbox_id(just_made)}
    fake_clock.advance(1)
    result = await monitor(engine, pool).run_once()
    assert agent.calls == 2
    assert await rows.status(just_made) == "running"
    assert await rows.status(gone) == "stopped"
    assert result.to_stopped == [ids.sandbox_id(gone)]
