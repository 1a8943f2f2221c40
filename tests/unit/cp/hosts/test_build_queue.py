"""Builds waiting for a host's room take it in turn (session 38, migration 0024) against a real
database: ``BuildHost.take_turn``, one try of a step's wait, keeps the build's place, and
``warren_reserve_build`` fits a step only beside what the builds ahead of it need.

The host here has room for one step (one core, no CPU overcommit, one-vCPU steps), as in the
attack it answers (``tests/security/test_attack_session37_build_lifecycle.py``): a team that
resubmits the moment its build ends must not take every room that is freed while another
team's build waits.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from warren import clock, ids
from warren.config import Settings
from warren.cp.db.tables import template_builds
from warren.cp.hosts.scheduler import RoundRobinScheduler
from warren.cp.services.template_build_host import BuildHost

from .conftest import Rows
from .test_capacity import _size


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    # The builds too: a waiting build of an earlier test would hold its turn on this test's host.
    async with emptied_engine(db_url, "sandboxes", "hosts", "audit_logs", "template_builds") as e:
        yield e


SETTINGS = Settings(jwt_secret="x" * 32, build_vcpus=1, build_memory_mb=256, overcommit_cpu=1.0)


class Builds:
    """A team's builds on one scheduler, each a ``BuildHost`` as the build runner makes it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.scheduler = RoundRobinScheduler()

    async def new(self, team: uuid.UUID) -> BuildHost:
        build = ids.new_uuid()
        async with self.engine.begin() as conn:
            await conn.execute(
                template_builds.insert().values(
                    id=build, team_id=team, name="b", spec="FROM minimal", status="running",
                    heartbeat_at=clock.now(),
                )
            )  # fmt: skip
        # The pool and the store serve the step's RPC and its layer, not its room.
        none = cast(Any, None)
        return BuildHost(self.engine, none, self.scheduler, none, SETTINGS, team, build)

    async def take(self, b: BuildHost) -> uuid.UUID | None:
        """The host whose room the build's step got, or None: it waits."""
        host, _ = await b.take_turn(b._need())
        return host["id"] if host is not None else None

    async def release(self, b: BuildHost) -> None:
        await b._release()

    async def set(self, b: BuildHost, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                template_builds.update().where(template_builds.c.id == b.build_id).values(**values)
            )


async def _one_room_host(rows: Rows, engine: AsyncEngine, **kw: Any) -> uuid.UUID:
    admin = await rows.user(admin=True)
    host = await rows.host(admin, **kw)
    await _size(engine, host, 1, 0)  # one core, memory not bounded: room for one 1-vCPU step
    return host


async def test_a_newcomer_waits_behind_a_build_that_waited_first(engine: AsyncEngine, rows: Rows) -> None:
    host = await _one_room_host(rows, engine)
    hog, other = await rows.team(), await rows.team()
    q = Builds(engine)
    first, waiting = await q.new(hog), await q.new(other)
    assert await q.take(first) == host
    assert await q.take(waiting) is None  # no room: its wait is noted
    await q.release(first)
    # The hog resubmits the moment its build ends: its new build finds the room, but the room is
    # the waiting build's.
    newcomer = await q.new(hog)
    assert await q.take(newcomer) is None
    assert await q.take(waiting) == host
    await q.release(waiting)
    assert await q.take(newcomer) == host


async def test_each_team_gets_one_turn_a_round(engine: AsyncEngine, rows: Rows) -> None:
    host = await _one_room_host(rows, engine)
    hog, other = await rows.team(), await rows.team()
    q = Builds(engine)
    holder = await q.new(other)
    assert await q.take(holder) == host
    # Three of the hog's builds wait, then one of another team.
    waiting = [await q.new(hog) for _ in range(3)] + [await q.new(other)]
    for b in waiting:
        assert await q.take(b) is None
    await q.release(holder)
    order = []
    for _ in waiting:
        got = [b for b in waiting if b not in order and await q.take(b) == host]
        assert len(got) == 1, "one room: one build gets it"
        order.append(got[0])
        await q.release(got[0])
    # The hog's first, the other team's (its turn 1 before the hog's turns 2 and 3), the hog's.
    assert [waiting.index(b) for b in order] == [0, 3, 1, 2]


async def test_a_builds_next_step_waits_its_turn_too(engine: AsyncEngine, rows: Rows) -> None:
    host = await _one_room_host(rows, engine)
    hog, other = await rows.team(), await rows.team()
    q = Builds(engine)
    steps, waiting = await q.new(hog), await q.new(other)
    assert await q.take(steps) == host  # its first step: the build's host is chosen
    assert await q.take(waiting) is None
    await q.release(steps)
    assert await q.take(steps) is None  # a long build's next step goes after the waiting one
    assert await q.take(waiting) == host
    await q.release(waiting)
    assert await q.take(steps) == host


async def test_room_for_both_is_taken_without_waiting(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    host = await rows.host(admin)
    await _size(engine, host, 1, 0)
    team, other = await rows.team(), await rows.team()
    q = Builds(engine)
    holder, waiting = await q.new(team), await q.new(other)
    assert await q.take(holder) == host
    assert await q.take(waiting) is None
    await _size(engine, host, 3, 0)  # beside the holder, room for the waiting build and one more
    assert await q.take(await q.new(team)) == host
    assert await q.take(waiting) == host


async def test_a_wait_not_renewed_or_ended_holds_no_turn(engine: AsyncEngine, rows: Rows) -> None:
    host = await _one_room_host(rows, engine)
    team, other = await rows.team(), await rows.team()
    q = Builds(engine)
    holder, gone, ended = await q.new(team), await q.new(other), await q.new(other)
    assert await q.take(holder) == host
    assert await q.take(gone) is None
    assert await q.take(ended) is None
    await q.release(holder)
    # Its replica died mid-wait (no try for 20 s); the other was failed or cancelled.
    await q.set(gone, wait_seen_at=sa.func.now() - sa.text("interval '20 seconds'"))
    await q.set(ended, status="failed")
    assert await q.take(await q.new(team)) == host


async def test_a_wait_for_another_host_or_pool_holds_no_turn_here(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    one, two = await rows.host(admin, created_offset_s=0), await rows.host(admin, created_offset_s=1)
    byoc = await rows.team(byoc=True)
    own = await rows.host(admin, type="byoc", team_id=byoc)
    for h in (one, two, own):
        await _size(engine, h, 1, 0)
    team, other, third = await rows.team(), await rows.team(), await rows.team()
    q = Builds(engine)
    pinned, holder = await q.new(other), await q.new(team)
    first = await q.take(pinned)  # its first step chooses its build host
    free = await q.take(holder)
    assert {first, free} == {one, two}
    await q.release(pinned)
    blocker = await q.new(third)
    assert await q.take(blocker) == first
    assert await q.take(pinned) is None  # its next step waits for its own host
    # A BYOC team's build waits for its team's own host.
    byoc_holder, byoc_build = await q.new(byoc), await q.new(byoc)
    assert await q.take(byoc_holder) == own
    assert await q.take(byoc_build) is None
    await q.release(holder)
    # Neither wait is for the host freed: a newcomer takes it.
    assert await q.take(await q.new(team)) == free
    await q.release(blocker)
    assert await q.take(await q.new(team)) is None  # the pinned build's host is its turn
    assert await q.take(pinned) == first


async def _wait_columns(engine: AsyncEngine, b: BuildHost) -> Any:
    async with engine.connect() as conn:
        c = template_builds.c
        q = sa.select(c.wait_since, c.wait_seen_at, c.wait_host_id).where(c.id == b.build_id)
        return (await conn.execute(q)).one()


async def test_a_wait_keeps_its_start_and_ends_with_the_room(engine: AsyncEngine, rows: Rows) -> None:
    host = await _one_room_host(rows, engine)
    team, other = await rows.team(), await rows.team()
    q = Builds(engine)
    holder, waiting = await q.new(team), await q.new(other)
    assert await q.take(holder) == host
    assert await q.take(waiting) is None
    first = await _wait_columns(engine, waiting)
    assert first.wait_host_id is None  # no host chosen yet: any of its pool
    assert await q.take(waiting) is None
    again = await _wait_columns(engine, waiting)
    assert again.wait_since == first.wait_since and again.wait_seen_at > first.wait_seen_at
    await q.release(holder)
    assert await q.take(waiting) == host
    assert tuple(await _wait_columns(engine, waiting)) == (None, None, None)


async def test_a_first_step_finding_a_hosts_room_queued_takes_another_hosts(
    engine: AsyncEngine, rows: Rows
) -> None:
    admin = await rows.user(admin=True)
    one, two = await rows.host(admin, created_offset_s=0), await rows.host(admin, created_offset_s=1)
    for h in (one, two):
        await _size(engine, h, 1, 0)
    team, other = await rows.team(), await rows.team()
    q = Builds(engine)
    pinned, holder = await q.new(other), await q.new(team)
    first = await q.take(pinned)
    free = await q.take(holder)
    assert {first, free} == {one, two}
    await q.set(pinned, reserved_host_id=None)  # between its steps: its wait for `first` is noted
    await q.release(holder)
    await q.set(holder, reserved_host_id=first)  # `first` is full again, and `pinned` waits for it
    assert await q.take(pinned) is None
    await q.set(holder, reserved_host_id=None)
    # Both hosts have room; the scheduler's rotation may offer `first`, whose room is the pinned
    # build's: the newcomers each take `free` in turn, whichever host the rotation offers first.
    for _ in range(2):
        newcomer = await q.new(team)
        assert await q.take(newcomer) == free
        await q.release(newcomer)
    assert await q.take(pinned) == first
