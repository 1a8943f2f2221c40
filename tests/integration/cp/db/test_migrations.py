"""The Alembic migrations build exactly the schema of ``warren.cp.db.tables`` and undo it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner, Result

from warren.cli.main import app as cli_app
from warren.cp.db import migrate, tables
from warren.cp.db.engine import to_async_url


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _exec(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def empty_db(pg_server_url: str) -> Iterator[str]:
    """A brand-new, empty database (not from the migrated template)."""
    name = f"warren_mig_{uuid.uuid4().hex[:12]}"
    asyncio.run(_exec(pg_server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_exec(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _schema(url: str) -> dict[str, dict[str, object]]:
    """Table -> {columns, indexes, uniques, fks, pk} as the database reports them."""

    def read(conn: Connection) -> dict[str, dict[str, object]]:
        insp = inspect(conn)
        out: dict[str, dict[str, object]] = {}
        for t in insp.get_table_names():
            if t == "alembic_version":
                continue
            out[t] = {
                "columns": {c["name"]: (str(c["type"]), c["nullable"]) for c in insp.get_columns(t)},
                "pk": tuple(insp.get_pk_constraint(t)["constrained_columns"]),
                "indexes": {i["name"] for i in insp.get_indexes(t) if not i.get("duplicates_constraint")},
                "uniques": {tuple(u["column_names"]) for u in insp.get_unique_constraints(t)},
                "fks": {
                    (
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        (f.get("options") or {}).get("ondelete"),
                    )
                    for f in insp.get_foreign_keys(t)
                },
            }
        return out

    async def go() -> dict[str, dict[str, object]]:
        engine = create_async_engine(to_async_url(url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _expected() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for t in tables.metadata.sorted_tables:
        out[t.name] = {
            "columns": {c.name: c.nullable for c in t.columns},
            "pk": tuple(c.name for c in t.primary_key.columns),
            "indexes": {i.name for i in t.indexes},
            "uniques": {
                tuple(c.name for c in u.columns)
                for u in t.constraints
                if u.__class__.__name__ == "UniqueConstraint"
            }
            | {(c.name,) for c in t.columns if c.unique},
            "fks": {((fk.parent.name,), fk.column.table.name, fk.ondelete) for fk in t.foreign_keys},
        }
    return out


def test_upgrade_from_empty_matches_tables_and_downgrade_to_base(empty_db: str) -> None:
    st = migrate.status(empty_db)
    assert st.current is None and st.pending and st.pending[-1] == st.head

    migrate.upgrade(empty_db)
    st = migrate.status(empty_db)
    assert st.current == st.head and st.up_to_date and st.pending == []

    actual = _schema(empty_db)
    expected = _expected()
    assert set(actual) == set(expected)
    for name, exp in expected.items():
        act = actual[name]
        assert {c: n for c, (_t, n) in act["columns"].items()} == exp["columns"], name  # type: ignore[union-attr]
        assert act["pk"] == exp["pk"], name
        assert act["indexes"] == exp["indexes"], name
        assert act["uniques"] == exp["uniques"], name
        assert act["fks"] == exp["fks"], name

    migrate.downgrade(empty_db, "base")
    assert _schema(empty_db) == {}
    assert migrate.status(empty_db).current is None

    async def leftovers() -> list[str]:
        conn = await asyncpg.connect(_dsn(empty_db))
        try:
            rows = await conn.fetch(
                "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public'"
            )
            return [r[0] for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(leftovers()) == []

    # And back up again: the round trip is repeatable.
    migrate.upgrade(empty_db)
    assert migrate.status(empty_db).up_to_date


def test_upgrade_is_idempotent_and_safe_across_processes(empty_db: str) -> None:
    # Several CP replicas may start at once against one database: they queue on an advisory lock.
    code = "import sys; from warren.cp.db import migrate; migrate.upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, empty_db]) for _ in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    migrate.upgrade(empty_db)
    assert migrate.status(empty_db).up_to_date


async def test_minimal_seed_and_reserved_name_trigger(db_url: str) -> None:
    conn = await asyncpg.connect(_dsn(db_url))
    try:
        row = await conn.fetchrow(
            "SELECT id, team_id, type, vcpus, memory_mb FROM templates WHERE name='minimal'"
        )
        assert row is not None
        assert row["id"] == uuid.UUID(int=0) and row["team_id"] == uuid.UUID(int=0)
        assert (row["type"], row["vcpus"], row["memory_mb"]) == ("base", 1, 512)

        team = uuid.uuid4()
        with pytest.raises(asyncpg.UniqueViolationError, match="reserved"):
            await conn.execute(
                "INSERT INTO templates (id, name, team_id) VALUES ($1, 'minimal', $2)", uuid.uuid4(), team
            )
        # Renaming a team template onto a platform name is refused too.
        tid = uuid.uuid4()
        await conn.execute("INSERT INTO templates (id, name, team_id) VALUES ($1, 'mine', $2)", tid, team)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE templates SET name='minimal' WHERE id=$1", tid)
        # The same name in two teams is fine; twice in one team is not.
        await conn.execute(
            "INSERT INTO templates (id, name, team_id) VALUES ($1, 'mine', $2)", uuid.uuid4(), uuid.uuid4()
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO templates (id, name, team_id) VALUES ($1, 'mine', $2)", uuid.uuid4(), team
            )
    finally:
        await conn.close()


def test_migrations_ship_inside_the_package() -> None:
    # Found next to the module (installed package), not relative to the cwd.
    assert (migrate.MIGRATIONS_DIR / "env.py").exists()
    assert migrate.head_revision()


def test_warren_migrate_cli_up_status_down(empty_db: str, tmp_path: Path) -> None:
    """``warren migrate up|down|status`` against WARREN_DATABASE_URL (no embedded server).
    In process through typer's CliRunner (the real ``warren.cli.main`` app, as test_cli.py):
    each command as a process of its own paid ~2-5 s of imports, five times."""
    env = {"WARREN_DATABASE_URL": empty_db, "WARREN_HOME": str(tmp_path)}

    def warren(*args: str) -> Result:
        return CliRunner().invoke(cli_app, ["migrate", *args], env=env)

    res = warren("status", "--check")
    assert res.exit_code == 1 and "none (empty database)" in res.stdout, res.output
    res = warren("up")
    assert res.exit_code == 0, res.output
    st = migrate.status(empty_db)
    assert st.up_to_date and st.current == st.head and st.head in res.stdout
    res = warren("status", "--check")
    assert res.exit_code == 0 and "pending  none" in res.stdout
    res = warren("down", "base")  # asks first; no answer → nothing happens
    assert res.exit_code != 0 and migrate.status(empty_db).up_to_date
    res = warren("down", "base", "--yes")
    assert res.exit_code == 0, res.output
    assert migrate.status(empty_db).current is None and _schema(empty_db) == {}
