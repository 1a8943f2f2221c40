"""``warren_sandbox_footprint`` (migration 0021) is ``footprint.footprint_mb`` in SQL: the same
number for many sizes on each runtime (and an unknown or NULL one: runc's rule), and the host
sums (``warren_host_usage``) count each sandbox at it, a running build step at its host's
default runtime."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import RUNTIMES
from warren.cp.db.engine import driver
from warren.cp.db.queries.sandboxes import RESERVE
from warren.cp.db.tables import template_builds
from warren.cp.hosts.scheduler import Overcommit, Reservation, eligible_hosts, fits
from warren.footprint import footprint_mb

from .conftest import Rows

# Up to int32's top: the SQL must not overflow (it did in int, session 21).
SIZES = [*range(1, 5000), *range(5000, 300_000, 997), 1 << 20, 2**31 - 600, 2**31 - 1]


async def test_the_sql_footprint_is_the_python_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        for runtime in (*RUNTIMES, "something-else"):
            got = (
                await conn.execute(
                    sa.text("SELECT m, warren_sandbox_footprint(m, :r) FROM unnest(CAST(:sizes AS int[])) m"),
                    {"r": runtime, "sizes": SIZES},
                )
            ).all()
            wrong = [(m, f, footprint_mb(m, runtime)) for m, f in got if f != footprint_mb(m, runtime)]
            assert len(got) == len(SIZES) and not wrong, (runtime, wrong[:5])
        null = (await conn.execute(sa.text("SELECT warren_sandbox_footprint(64, NULL)"))).scalar()
    assert null == footprint_mb(64, "runc")


async def _usage(engine: AsyncEngine, host: object) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text("SELECT * FROM warren_host_usage(:h)"), {"h": host})).one()
    return int(row.vcpus), int(row.memory_mb)


async def test_host_usage_sums_footprints(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    await rows.sandbox(team, host, vcpus=1, memory_mb=64, runtime="runc")
    await rows.sandbox(team, host, status="paused", vcpus=1, memory_mb=512, runtime="crun")
    await rows.sandbox(team, host, vcpus=2, memory_mb=1024, runtime="gvisor")
    await rows.sandbox(team, host, status="stopped", vcpus=1, memory_mb=4096, runtime="runc")
    want = footprint_mb(64, "runc") + footprint_mb(512, "crun") + footprint_mb(1024, "gvisor")
    assert await _usage(engine, host) == (4, want) == (4, 96 + 576 + 1120)


async def test_a_build_step_counts_at_its_hosts_default_runtime(engine: AsyncEngine, rows: Rows) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team(owner=admin)
    host = await rows.host(admin)
    async with engine.begin() as conn:
        await conn.execute(
            template_builds.insert().values(
                id=ids.new_uuid(), team_id=team, name="b", spec="FROM minimal", status="running",
                heartbeat_at=clock.now(), reserved_host_id=host, reserved_vcpus=2, reserved_memory_mb=2048,
            )
        )  # fmt: skip
    assert await _usage(engine, host) == (2, footprint_mb(2048, "runc"))  # never said: runc
    for default in RUNTIMES:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE hosts SET default_runtime = :r WHERE id = :h"), {"r": default, "h": host}
            )
        assert await _usage(engine, host) == (2, footprint_mb(2048, default)), default


async def test_fits_and_the_reserve_agree_at_the_edge(engine: AsyncEngine, rows: Rows) -> None:
    """The scheduler's read (``fits`` on the candidate row) and the pending insert
    (``warren_reserve_sandbox``) give the same answer for sizes around a host's last MiB, on each
    runtime and on the host's default ("")."""
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    await rows.sandbox(team, host, vcpus=1, memory_mb=300, runtime="gvisor")  # 396 MiB
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE hosts SET cpu_cores = 64, memory_mb = 2000, default_runtime = 'gvisor' WHERE id = :h"
            ),
            {"h": host},
        )
    oc = Overcommit(cpu=4.0, memory=1.0)
    async with driver(engine) as conn:
        [h] = [r for r in await eligible_hosts(conn, team, False) if r["id"] == host]
        assert h["used_memory_mb"] == 396
        for runtime in ("", *RUNTIMES):
            on = runtime or "gvisor"
            edge = 2000 - 396 - footprint_mb(0, on)  # about where the new one stops fitting
            for memory_mb in range(edge - 300, edge + 20):
                need = Reservation(1, memory_mb, oc)
                tx = conn.transaction()
                await tx.start()
                row = await conn.fetchrow(
                    RESERVE,
                    ids.new_uuid(), team, host, "minimal", 1, memory_mb, 60, 64, True, clock.now(),
                    ids.ZERO_UUID, ids.ZERO_UUID, 100, 1000, 1 << 20, oc.cpu, oc.memory, None, on, None,
                )  # fmt: skip
                await tx.rollback()
                assert row is not None
                assert fits(h, need, runtime) == (row["outcome"] == "ok"), (
                    runtime,
                    memory_mb,
                    row["outcome"],
                )
                assert fits(h, need, runtime) == (396 + footprint_mb(memory_mb, on) <= 2000)
