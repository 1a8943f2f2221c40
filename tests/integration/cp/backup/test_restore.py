"""Restore against a real PostgreSQL, without a platform: a backup taken at an older migration
is migrated forward after pg_restore, and a backup from a migration this Warren does not know
is refused before the database is touched."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from warren.config import Settings
from warren.cp.backup import BackupError, make_backup, restore_backup
from warren.cp.db import migrate


def _admin(server_url: str, statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(
            make_url(server_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def databases(pg_server_url: str) -> Iterator[list[str]]:
    """Names of the databases a test made, dropped after the module."""
    made: list[str] = []
    yield made
    for name in made:
        _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _new_database(server_url: str, made: list[str]) -> str:
    name = f"bk_{uuid.uuid4().hex[:12]}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    made.append(name)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def test_an_older_backup_is_migrated_forward(
    pg_server_url: str, databases: list[str], tmp_path: Path
) -> None:
    source = _new_database(pg_server_url, databases)
    migrate.upgrade(source, "0005")
    lines: list[str] = []
    backup = make_backup(
        source, Settings(home=tmp_path / "a", jwt_secret=""), tmp_path / "bk", say=lines.append
    )
    assert backup.manifest.migration_head == "0005"
    assert any(line.startswith("dumping the database (PostgreSQL") for line in lines)
    target = _new_database(pg_server_url, databases)
    result = restore_backup(target, Settings(home=tmp_path / "b", jwt_secret=""), tmp_path / "bk")
    assert result.migrated_from == "0005"
    assert result.revision == migrate.head_revision() == migrate.status(target).current


def test_a_backup_from_an_unknown_migration_is_refused(
    pg_server_url: str, databases: list[str], tmp_path: Path
) -> None:
    source = _new_database(pg_server_url, databases)
    migrate.upgrade(source, "head")
    make_backup(source, Settings(home=tmp_path / "a", jwt_secret=""), tmp_path / "bk")
    manifest = tmp_path / "bk" / "backup.json"
    body = json.loads(manifest.read_text())
    body["migration_head"] = "9999"
    manifest.write_text(json.dumps(body))
    target = _new_database(pg_server_url, databases)
    with pytest.raises(BackupError, match="migration 9999, which this Warren does not know"):
        restore_backup(target, Settings(home=tmp_path / "b", jwt_secret=""), tmp_path / "bk")
    assert migrate.status(target).current is None  # untouched
