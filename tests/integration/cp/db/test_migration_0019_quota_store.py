"""Migration 0019 (``teams.quota_store_mb``): the store bound an admin-set snapshot quota implied
(twice it) is kept, except the 0 that was the defect (a team without snapshot quota could not
build); the platform default likewise; downgrade undoes it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.integration.cp.db.test_migrations import _dsn, empty_db  # noqa: F401 - the fixture
from warren.cp.db import migrate

TEAMS = {"raised": 100_000, "lowered": 16, "none": 0, "default": None, "huge": 2_000_000_000}


async def _seed(url: str) -> dict[str, uuid.UUID]:
    conn = await asyncpg.connect(_dsn(url))
    made = {}
    try:
        for name, mb in TEAMS.items():
            made[name] = uuid.uuid4()
            await conn.execute(
                "INSERT INTO teams (id, name, slug, quota_snapshot_mb) VALUES ($1, $2, $3, $4)",
                made[name], name, f"m0019-{name}", mb,
            )  # fmt: skip
        await conn.execute("INSERT INTO platform_limits (key, value) VALUES ('quota_snapshot_mb', 30000)")
    finally:
        await conn.close()
    return made


async def _read(url: str, made: dict[str, uuid.UUID]) -> tuple[dict[str, int | None], list]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT id, quota_store_mb FROM teams WHERE id = ANY($1::uuid[])", list(made.values())
        )
        limits = await conn.fetch("SELECT key, value FROM platform_limits WHERE key = 'quota_store_mb'")
    finally:
        await conn.close()
    by_id = {r["id"]: r["quota_store_mb"] for r in rows}
    return {name: by_id[tid] for name, tid in made.items()}, [tuple(r) for r in limits]


def test_0019_keeps_the_store_bound_an_admin_set_snapshot_quota_implied(empty_db: str) -> None:  # noqa: F811
    migrate.upgrade(empty_db, "0017")
    made = asyncio.run(_seed(empty_db))
    migrate.upgrade(empty_db, "0019")
    store, limits = asyncio.run(_read(empty_db, made))
    assert store == {"raised": 200_000, "lowered": 32, "none": None, "default": None, "huge": 2**31 - 1}
    assert limits == [("quota_store_mb", 60000)]
    migrate.downgrade(empty_db, "0018")
    assert "quota_store_mb" not in asyncio.run(_columns(empty_db))


async def _columns(url: str) -> set[str]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'teams'"
        )
        assert not await conn.fetch("SELECT 1 FROM platform_limits WHERE key = 'quota_store_mb'")
    finally:
        await conn.close()
    return {r["column_name"] for r in rows}
