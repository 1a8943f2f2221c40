"""The async engine and connections. One engine per CP process, created by the app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn


def to_async_url(url: str) -> str:
    """Accept ``postgres://`` / ``postgresql://`` URLs and use the asyncpg driver."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def make_engine(
    url: str, *, pool_size: int = 20, max_overflow: int = 0, pool_timeout: float = 30.0
) -> AsyncEngine:
    """A fixed pool by default: under a burst past ``pool_size`` a request waits for a free
    connection instead of opening another. An overflow connection is closed again as soon as it
    is returned, so overflow turns every burst into connection setups (TCP, SSL negotiation,
    authentication, a fresh prepared-statement cache), which cost far more CPU than the queries
    themselves — measured in bench/schedule.py. No request path holds a connection across an
    agent call (the monitor does, for a bounded number of hosts), so waits stay short."""
    return create_async_engine(
        to_async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=False,
        pool_recycle=1800,
    )


# The connection helpers. Hot-path statements (SQL constants in ``warren.cp.db.queries``) run
# on :func:`driver`; everything else is SQLAlchemy Core on :func:`autocommit` or
# :func:`transaction` (docs/architecture.md, "Database conventions").


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection in one transaction, for statements that must commit together or hold row
    locks: committed on success, rolled back on error."""
    async with engine.begin() as conn:
        yield conn


_autocommit_engines: dict[int, AsyncEngine] = {}


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection on which each statement commits on its own (no BEGIN/ROLLBACK around
    it), for reads and single-statement writes: one round trip per statement instead of three,
    which is most of the cost of a short request."""
    # The engine copy with the option shares the pool; made once per engine, as creating it
    # costs more than the connect.
    ac = _autocommit_engines.get(id(engine))
    if ac is None or ac.sync_engine.pool is not engine.sync_engine.pool:
        ac = _autocommit_engines[id(engine)] = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with ac.connect() as conn:
        yield conn


_CUT_SHORT = (asyncio.CancelledError, TimeoutError, OSError, asyncpg.InterfaceError)

# Either kind of connection: the raw driver one (``driver``) or an SQLAlchemy one, e.g. inside a
# transaction. :func:`fetch`/:func:`fetchrow` run a ``queries`` constant on either, for the few
# hot statements that a transaction must also run (the team/role check under ``FOR UPDATE``)
# and for callers that may hold either kind (the scheduler).
Conn: TypeAlias = AsyncConnection | asyncpg.Connection


async def fetch(conn: Conn, sql: str, *args: Any) -> list[Mapping[Any, Any]]:
    """Run one ``$n`` statement on either kind of connection (on an SQLAlchemy connection it
    runs in that connection's transaction) and return its rows as mappings."""
    if isinstance(conn, AsyncConnection):
        return list((await conn.exec_driver_sql(sql, args)).mappings())
    rows: list[Mapping[Any, Any]] = await conn.fetch(sql, *args)
    return rows


async def fetchrow(conn: Conn, sql: str, *args: Any) -> Mapping[Any, Any] | None:
    """The first row of :func:`fetch`, or None."""
    if isinstance(conn, AsyncConnection):
        return (await conn.exec_driver_sql(sql, args)).mappings().first()
    row: Mapping[Any, Any] | None = await conn.fetchrow(sql, *args)
    return row


@asynccontextmanager
async def driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """The pool's asyncpg connection itself, outside any transaction (each statement commits on
    its own), for the hottest single-statement queries: the per-request auth checks and the
    busiest reads. Executing through SQLAlchemy costs several times the CPU of the round trip
    (execution context, parameter processing, result wrapping); asyncpg runs ``$n`` SQL through
    its own per-connection prepared-statement cache.

    A server-reported error, or an error the caller raises between statements, leaves the
    connection in sync; a cancelled request or a lost socket may have cut a statement short, so
    then the connection is closed rather than handed to the next request."""
    try:
        raw = await engine.raw_connection()
    except Exception as e:
        # SQLAlchemy's asyncpg adapter raises its own error class here, unwrapped (no DBAPIError):
        # the driver's error is its cause, which the HTTP layer maps (no slot left: 503).
        if isinstance(e.__cause__, asyncpg.PostgresError):
            raise e.__cause__ from e
        raise
    try:
        yield raw.driver_connection
    except _CUT_SHORT:
        await greenlet_spawn(raw.invalidate)
        raise
    finally:
        # In a greenlet: returning an overflow connection to a full pool closes it, which awaits.
        await greenlet_spawn(raw.close)
