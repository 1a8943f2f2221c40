"""Build steps in a host's capacity (session 15, migration 0020) against a real database: a running
build's step reservation (``warren_reserve_build``) counts for the scheduler and for a create's
``warren_reserve_sandbox`` like a sandbox; concurrent steps cannot overfill a host; the room is
given back by the step's release, by the build's end, and by the stale-heartbeat sweep."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import template_builds
from warren.cp.hosts.scheduler import Reservation, RoundRobinScheduler
from warren.cp.services.template_builds import mark_failed, sweep_stale
from warren.errors import ServiceUnavailable

from .conftest import Rows
from .test_capacity import OC, _pick, _reserve, _size, fp


async def _build(engine: AsyncEngine, team: uuid.UUID, *, heartbeat_age_s: float = 0) -> uuid.UUID:
    b = ids.new_uuid()
    async with engine.begin() as conn:
        await conn.execute(
            template_builds.insert().values(
                id=b, team_id=team, name="b", spec="FROM minimal", status="running",
                heartbeat_at=clock.now() - timedelta(seconds=heartbeat_age_s),
            )
        )  # fmt: skip
    return b


async def _reserve_build(engine: AsyncEngine, build: uuid.UUID, host: uuid.UUID, memory_mb: int) -> str:
    async with engine.connect() as conn:
        f = sa.func.warren_reserve_build(build, host, 1, memory_mb, OC.cpu, OC.memory)
        outcome = (await conn.execute(sa.select(f))).scalar()
        await conn.commit()
    return str(outcome)


async def _release(engine: AsyncEngine, build: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            template_builds.update().where(template_builds.c.id == build).values(reserved_host_id=None)
        )


async def test_a_build_step_takes_room_from_creates_until_released(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    # Room for the 768 MiB step and a 256 MiB sandbox at their footprints (the host never said
    # its default runtime: runc's rule for the step), no more.
    await _size(engine, host, 4, fp(768) + fp(256))
    build = await _build(engine, team)
    assert await _reserve_build(engine, build, host, 768) == "ok"
    s = RoundRobinScheduler()
    with pytest.raises(ServiceUnavailable) as e:
        await _pick(engine, s, team, Reservation(1, 512, OC))
    assert e.value.code == "no_capacity"
    assert await _reserve(engine, team, host, memory_mb=512) == "no_capacity"
    assert await _reserve(engine, team, host, memory_mb=256) == "ok"
    # The build's next step reserves again without counting its own earlier one.
    assert await _reserve_build(engine, build, host, 768) == "ok"
    await _release(engine, build)
    assert await _pick(engine, s, team, Reservation(1, 512, OC)) == host
    assert await _reserve(engine, team, host, memory_mb=512) == "ok"


async def test_concurrent_steps_cannot_overfill_the_host(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    await _size(engine, host, 64, 3 * fp(384) - 1)  # room for two steps' footprints, not three
    builds = [await _build(engine, team) for _ in range(6)]
    outcomes = await asyncio.gather(*(_reserve_build(engine, b, host, 384) for b in builds))
    assert sorted(outcomes) == ["no_capacity"] * 4 + ["ok"] * 2, outcomes


async def test_an_ended_or_stale_build_gives_its_room_back(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    await _size(engine, host, 4, 2 * fp(512))  # two 512 MiB steps at their footprints
    failed, stale = await _build(engine, team), await _build(engine, team, heartbeat_age_s=3600)
    assert await _reserve_build(engine, failed, host, 512) == "ok"
    assert await _reserve_build(engine, stale, host, 512) == "ok"
    assert await _reserve(engine, team, host) == "no_capacity"
    await mark_failed(engine, failed, "step failed")  # the step's release never ran
    assert await _reserve_build(engine, failed, host, 512) == "no_build"
    assert await _reserve(engine, team, host) == "ok"
    # Its replica died mid-step: the sweep fails the build, and its room goes with it.
    assert await sweep_stale(engine, 60) >= 1
    assert await _reserve(engine, team, host, memory_mb=512) == "ok"
    # A host that left `online` takes no step.
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE hosts SET status = 'unreachable' WHERE id = :h"), {"h": host})
    assert await _reserve_build(engine, await _build(engine, team), host, 64) == "host_gone"
