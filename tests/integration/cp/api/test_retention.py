"""Retention (``services/retention.py``, docs/operations.md "Retention") on an in-process CP and
its real database, with the fake clock: what a tenant's create/kill loop and audited calls leave
behind is deleted once past its window, and nothing else is.

Rows are written straight into the database where the API would need an agent (a sandbox's
life); the API reads them back. The harness's CP runs its own retention pass only hourly: the
tests run it themselves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.harness.cp import InProcessCP, User
from warren import clock, ids
from warren.config import Settings
from warren.cp.db.tables import (
    audit_logs,
    hosts,
    sandbox_metric_points,
    sandboxes,
    teams,
    template_build_logs,
    template_builds,
    templates,
    users,
)
from warren.cp.services import e2b_snapshots, platform_metrics, retention
from warren.cp.services.context import AuthContext

DAY = 24 * 3600.0
PAST_SANDBOX_WINDOW = 7 * DAY + 60  # the defaults: 7 days of ended sandboxes, 90 of audit
PAST_AUDIT_WINDOW = 90 * DAY + 60
SOURCE = ids.sandbox_id(uuid.UUID(int=1))  # the sandbox the old snapshot records name


def _settings(cp: InProcessCP, **kw: Any) -> Settings:
    return cp.settings.model_copy(update=kw)


async def _host(cp: InProcessCP, status: str = "online") -> uuid.UUID:
    h, u = ids.new_uuid(), ids.new_uuid()
    now = clock.now()
    async with cp.engine.begin() as conn:
        await conn.execute(users.insert().values(id=u, email=f"{u.hex}@example.com", name="u"))
        await conn.execute(
            hosts.insert().values(
                id=h, type="regular", status=status, address="127.0.0.1:1", created_by=u,
                created_at=now, updated_at=now, last_heartbeat_at=now,
            )
        )  # fmt: skip
    return h


async def _sandbox(
    cp: InProcessCP, team: uuid.UUID, host: uuid.UUID, status: str, *, started: bool = True, **kw: Any
) -> uuid.UUID:
    """A sandbox row that ended (or changed) now, with the heavy columns a tenant fills."""
    s = ids.new_uuid()
    now = clock.now()
    async with cp.engine.begin() as conn:
        await conn.execute(
            sandboxes.insert().values(
                id=s, team_id=team, host_id=host, status=status, created_at=now - timedelta(hours=1),
                started_at=now - timedelta(hours=1) if started else None, last_updated=now,
                metadata={f"k{i}": "v" * 60 for i in range(20)},
                egress={"allow_out": [f"10.0.{i}.0/24" for i in range(50)], "deny_out": []},
                **kw,
            )
        )  # fmt: skip
    return s


async def _exists(cp: InProcessCP, s: uuid.UUID) -> bool:
    async with cp.engine.connect() as conn:
        return (await conn.execute(sa.select(sandboxes.c.id).where(sandboxes.c.id == s))).first() is not None


async def _usage(cp: InProcessCP, team_id: str) -> dict[str, float]:
    """The team's warren_team_* counters as a scrape would read them now."""
    out: dict[str, float] = {}
    for family in await platform_metrics.scrape_figures(cp.engine):
        if family.name.startswith("warren_team_"):
            for sample in family.samples:
                if sample.labels.get("team") == team_id and sample.name.endswith("_total"):
                    out[sample.name] = sample.value
    return out


async def test_ended_sandboxes_go_after_the_window_and_nothing_else(cp: InProcessCP) -> None:
    user = await cp.signup()
    team = ids.parse_id(ids.Kind.TEAM, user.team_id)
    online, down = await _host(cp), await _host(cp, "unreachable")
    deleted_host = ids.new_uuid()  # its row was removed: nothing is left to destroy there
    doomed = {
        "stopped": await _sandbox(cp, team, online, "stopped"),
        "error": await _sandbox(cp, team, online, "error", started=False),
        "stopped, host deleted": await _sandbox(cp, team, deleted_host, "stopped"),
    }
    samples = [{"sandbox_id": doomed["stopped"], "ts": clock.now() - timedelta(minutes=m)} for m in range(5)]
    async with cp.engine.begin() as conn:  # the samples a paused sandbox saved
        await conn.execute(sandbox_metric_points.insert().values(samples))
    kept = {
        status: await _sandbox(cp, team, online, status)
        for status in ("running", "paused", "pending", "starting", "missing")
    }
    # The monitor destroys what an unreachable host still runs only while the row says it ended.
    kept["stopped on an unreachable host"] = await _sandbox(cp, team, down, "stopped")
    sid = ids.sandbox_id(doomed["stopped"])
    r = await user.req("GET", f"/v1/sandboxes/{sid}")
    assert r.status_code == 200 and r.json()["status"] == "stopped", r.text

    clock.advance(PAST_SANDBOX_WINDOW)
    kept["stopped inside the window"] = await _sandbox(cp, team, online, "stopped")
    kept["error inside the window"] = await _sandbox(cp, team, online, "error")
    # A day short of the window: not yet.
    await retention.retention_pass(cp.engine, _settings(cp, sandbox_retention_days=8))
    assert all([await _exists(cp, s) for s in doomed.values()])

    report = await retention.retention_pass(cp.engine, cp.settings)
    assert report.sandboxes >= len(doomed) and report.metric_points >= 5
    for what, s in doomed.items():
        assert not await _exists(cp, s), what
    for what, s in kept.items():
        assert await _exists(cp, s), what
    r = await user.req("GET", f"/v1/sandboxes/{sid}")
    assert r.status_code == 404, r.text
    async with cp.engine.connect() as conn:
        points = sa.select(sa.func.count()).where(sandbox_metric_points.c.sandbox_id == doomed["stopped"])
        assert (await conn.execute(points)).scalar() == 0


async def test_zero_days_keeps_everything(cp: InProcessCP) -> None:
    user = await cp.signup()
    team = ids.parse_id(ids.Kind.TEAM, user.team_id)
    host = await _host(cp)
    s = await _sandbox(cp, team, host, "stopped")
    record = await _old_audit_record(cp, team, "apikey", "create", "key-x")
    clock.advance(PAST_AUDIT_WINDOW)
    forever = _settings(cp, sandbox_retention_days=0, audit_retention_days=0)
    report = await retention.retention_pass(cp.engine, forever)
    assert (report.sandboxes, report.audit) == (0, 0)
    assert await _exists(cp, s)
    assert ids.format_id(ids.Kind.AUDIT_LOG, record) in await _audit_ids(cp, user)


async def test_usage_counters_do_not_go_down_when_rows_go(cp: InProcessCP) -> None:
    user = await cp.signup()
    team = ids.parse_id(ids.Kind.TEAM, user.team_id)
    host = await _host(cp)
    for i in range(5):
        s = await _sandbox(cp, team, host, "stopped", vcpus=1 + i, memory_mb=256 * (i + 1))
        async with cp.engine.begin() as conn:
            await conn.execute(sandboxes.update().where(sandboxes.c.id == s).values(egress_bytes=10**12 + i))
    await _sandbox(cp, team, host, "error", started=False)  # never started: counts nothing
    before = await _usage(cp, user.team_id)
    assert before["warren_team_egress_bytes_total"] == 5 * 10**12 + 10
    clock.advance(PAST_SANDBOX_WINDOW)
    await retention.retention_pass(cp.engine, cp.settings)
    async with cp.engine.connect() as conn:
        left = sa.select(sa.func.count()).where(sandboxes.c.team_id == team)
        assert (await conn.execute(left)).scalar() == 0
    assert await _usage(cp, user.team_id) == before  # the very same values, not one less


async def _old_audit_record(
    cp: InProcessCP, team: uuid.UUID, resource_type: str, action: str, resource_id: str
) -> uuid.UUID:
    a = ids.new_uuid()
    async with cp.engine.begin() as conn:
        await conn.execute(
            audit_logs.insert().values(
                id=a, team_id=team, actor_type="user", resource_type=resource_type,
                resource_id=resource_id, action=action, created_at=clock.now(),
                metadata={"sandbox_id": SOURCE},
            )
        )  # fmt: skip
    return a


async def _audit_ids(cp: InProcessCP, user: User) -> list[str]:
    r = await user.req("GET", "/v1/audit", params={"limit": 200})
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


async def test_audit_records_go_after_the_window_but_a_live_snapshots_source(cp: InProcessCP) -> None:
    user = await cp.signup()  # its signup is audited now
    team = ids.parse_id(ids.Kind.TEAM, user.team_id)
    await user.api_key()  # a cheap audited call, as a flood would make
    old = await _audit_ids(cp, user)
    assert len(old) >= 2
    # E2B's list_snapshots(sandbox_id=…) finds a snapshot's source in its create record.
    async with cp.engine.begin() as conn:
        await conn.execute(
            templates.insert().values(
                id=ids.new_uuid(), team_id=team, name="snap-live", type="snapshot", source="snapshot",
                created_at=clock.now() - timedelta(seconds=1),
            )
        )  # fmt: skip
    live_source = await _old_audit_record(cp, team, "snapshot", "create", "snap-live")
    gone_source = await _old_audit_record(cp, team, "snapshot", "create", "snap-deleted")

    clock.advance(PAST_AUDIT_WINDOW)
    await user.api_key()  # inside the window
    report = await retention.retention_pass(cp.engine, cp.settings)
    assert report.audit >= len(old) + 1
    left = await _audit_ids(cp, user)
    assert not set(old) & set(left)
    assert ids.format_id(ids.Kind.AUDIT_LOG, live_source) in left
    assert ids.format_id(ids.Kind.AUDIT_LOG, gone_source) not in left
    ctx = AuthContext(kind="api_key", team_id=team)
    assert (await e2b_snapshots.list_page(cp.engine, ctx, sandbox_id=SOURCE)).names == ["snap-live"]
    async with cp.engine.connect() as conn:
        actions = (
            await conn.execute(sa.select(audit_logs.c.action).where(audit_logs.c.team_id == team))
        ).scalars()
        assert sorted(actions) == ["create", "create"]  # the live snapshot's and the new key's


async def test_two_replicas_passing_at_once_share_the_work(cp: InProcessCP) -> None:
    user = await cp.signup()
    team = ids.parse_id(ids.Kind.TEAM, user.team_id)
    host = await _host(cp)
    rows = [await _sandbox(cp, team, host, "stopped") for _ in range(40)]
    records = [await _old_audit_record(cp, team, "apikey", "create", f"key-{i}") for i in range(60)]
    clock.advance(PAST_AUDIT_WINDOW)
    cutoff = clock.now() - timedelta(days=7)
    # Small batches, so the two passes interleave on the same rows.
    (a_rows, _), (b_rows, _) = await asyncio.gather(
        retention.delete_ended_sandboxes(cp.engine, cutoff, batch=3),
        retention.delete_ended_sandboxes(cp.engine, cutoff, batch=3),
    )
    assert a_rows + b_rows >= len(rows)
    assert not any([await _exists(cp, s) for s in rows])
    a_audit, b_audit = await asyncio.gather(
        retention.delete_old_audit(cp.engine, clock.now() - timedelta(days=90), batch=4),
        retention.delete_old_audit(cp.engine, clock.now() - timedelta(days=90), batch=4),
    )
    assert a_audit + b_audit >= len(records)
    async with cp.engine.connect() as conn:
        left = sa.select(sa.func.count()).where(audit_logs.c.id.in_(records))
        assert (await conn.execute(left)).scalar() == 0
    # And whole passes at once, with nothing left to do, agree too.
    await asyncio.gather(*(retention.retention_pass(cp.engine, cp.settings) for _ in range(3)))


async def _build(cp: InProcessCP, team: uuid.UUID, status: str, ended_ago: timedelta | None) -> uuid.UUID:
    """A build row of ``team`` with a log chunk, ended ``ended_ago`` (None: still active)."""
    b = ids.new_uuid()
    now = clock.now()
    async with cp.engine.begin() as conn:
        await conn.execute(
            template_builds.insert().values(
                id=b, team_id=team, name="t", spec="FROM minimal\n", status=status, log_bytes=4,
                created_at=now - timedelta(hours=1),
                finished_at=None if ended_ago is None else now - ended_ago,
            )
        )  # fmt: skip
        await conn.execute(template_build_logs.insert().values(build_id=b, start_offset=0, data=b"log\n"))
    return b


async def test_a_deleted_teams_ended_builds_go_with_their_logs(cp: InProcessCP) -> None:
    """Session 37: a team's delete cancels its builds; their rows and logs (nobody can read them
    any more) go with the next pass once ended 10 minutes. A live team's builds stay."""
    live = ids.parse_id(ids.Kind.TEAM, (await cp.signup()).team_id)
    gone = ids.parse_id(ids.Kind.TEAM, (await cp.signup()).team_id)
    old = timedelta(minutes=11)
    doomed = [await _build(cp, gone, "failed", old), await _build(cp, gone, "ready", timedelta(days=3))]
    kept = [
        await _build(cp, gone, "running", None),  # its replica fails it once stopped
        await _build(cp, gone, "failed", timedelta(minutes=1)),  # just ended: not yet
        await _build(cp, live, "failed", old),
    ]
    async with cp.engine.begin() as conn:
        await conn.execute(teams.update().where(teams.c.id == gone).values(deleted_at=clock.now()))
    report = await retention.retention_pass(cp.engine, cp.settings)
    assert report.builds >= len(doomed)
    async with cp.engine.connect() as conn:
        left = set(
            (
                await conn.execute(
                    sa.select(template_builds.c.id).where(template_builds.c.id.in_(doomed + kept))
                )
            )
            .scalars()
            .all()
        )
        logs = set((await conn.execute(sa.select(template_build_logs.c.build_id))).scalars().all())
    assert left == set(kept)
    assert not set(doomed) & logs and set(kept) <= logs


def test_settings_are_checked() -> None:
    defaults = Settings(jwt_secret="x" * 32)
    assert (defaults.sandbox_retention_days, defaults.audit_retention_days) == (7, 90)
    bad: list[dict[str, Any]] = [
        {"sandbox_retention_days": -1},
        {"audit_retention_days": 36501},
        {"retention_interval_s": 0},
    ]
    for values in bad:
        with pytest.raises(ValueError):
            Settings(jwt_secret="x" * 32, **values)
    assert Settings(jwt_secret="x" * 32, audit_retention_days=0).audit_retention_days == 0


async def test_the_cps_background_worker_runs_the_pass(cp: InProcessCP, tmp_path: Path) -> None:
    """A second replica on the same database, its worker every half second: the row goes by
    itself (no pass called here)."""
    user = await cp.signup()
    # On a host since deleted: the replica's monitor, whose first pass runs at once, marks the
    # hosts it finds unreachable (their heartbeats are a week old now) and those rows would stay.
    s = await _sandbox(cp, ids.parse_id(ids.Kind.TEAM, user.team_id), ids.new_uuid(), "stopped")
    clock.advance(PAST_SANDBOX_WINDOW)
    url = cp.settings.database_url
    assert url
    replica = await InProcessCP(url, tmp_path, retention_interval_s=0.5).start()
    try:
        deadline = time.monotonic() + 60
        while await _exists(cp, s) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not await _exists(cp, s)
    finally:
        await replica.stop()
