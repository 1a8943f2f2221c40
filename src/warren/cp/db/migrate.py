"""Apply and inspect schema migrations (Alembic) programmatically.

The migration scripts are found next to this module inside the installed package, never
relative to the current directory. Used by ``warren migrate``, ``warren up``/``cp`` and tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from warren.cp.db.engine import to_async_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

T = TypeVar("T")

# Alembic drives env.py through module-level proxies (``alembic.context``), which are not
# thread-safe: one migration command at a time per process. Across processes (several CP
# replicas) env.py serialises on a PostgreSQL advisory lock instead.
_alembic_lock = threading.Lock()


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Config values go through configparser interpolation: a '%' (URL-quoted password)
        # must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` here, or in a helper thread when this thread already runs an event loop
    (env.py uses ``asyncio.run``, which cannot nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=target, name="warren-migrate")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def upgrade(url: str, revision: str = "head") -> None:
    def run() -> None:
        with _alembic_lock:
            command.upgrade(alembic_config(url), revision)

    _off_loop(run)


def downgrade(url: str, revision: str = "base") -> None:
    def run() -> None:
        with _alembic_lock:
            command.downgrade(alembic_config(url), revision)

    _off_loop(run)


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {heads}")
    return heads[0]


@dataclass(frozen=True)
class Status:
    current: str | None  # revision the database is at; None = empty (never migrated)
    head: str  # newest revision this version of Warren knows
    pending: list[str]  # revisions an upgrade would apply, oldest first

    @property
    def up_to_date(self) -> bool:
        return not self.pending and self.current == self.head


def status(url: str) -> Status:
    def current_heads(conn: Connection) -> tuple[str, ...]:
        return MigrationContext.configure(conn).get_current_heads()

    async def read() -> tuple[str, ...]:
        engine = create_async_engine(to_async_url(url), poolclass=pool.NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(current_heads)
        finally:
            await engine.dispose()

    heads = _off_loop(lambda: asyncio.run(read()))
    current = heads[0] if heads else None
    script = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    pending = [s.revision for s in script.iterate_revisions(head, current or "base")]
    pending.reverse()
    return Status(current=current, head=head, pending=pending)
