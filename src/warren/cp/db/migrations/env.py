"""Alembic environment. The database URL is always passed in programmatically
(``warren.cp.db.migrate`` sets ``sqlalchemy.url``), never read from an ini file or the cwd.

Migrations run on an asyncpg engine like the rest of the CP, through ``run_sync``. A caller that
already holds a connection may pass it as ``config.attributes["connection"]``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from warren.cp.db.engine import to_async_url
from warren.cp.db.tables import metadata

config = context.config
target_metadata = metadata


# Any fixed number: concurrent upgrades (several CP replicas starting at once) queue on it.
MIGRATION_LOCK_KEY = 0x77617272656E  # "warren"


def _configure_and_run(connection: Connection) -> None:
    # Held until the migration transaction ends, so a second runner sees the finished result.
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        # One transaction for the whole upgrade: a failed migration leaves nothing half-done.
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(to_async_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_configure_and_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migration environment")
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
