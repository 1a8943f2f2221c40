"""The async engine and connections. One engine per CP process, created by the app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def to_async_url(url: str) -> str:
    """Accept ``postgres://`` / ``postgresql://`` URLs and use the asyncpg driver."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """A pool that holds enough connections for the CP's concurrency: an overflow connection is
    closed again as soon as it is returned, so a pool that is too small turns every burst into
    connection setups (TCP, SSL negotiation, authentication, a fresh prepared-statement cache),
    which cost far more CPU than the queries themselves."""
    return create_async_engine(
        to_async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection in one transaction; committed on success, rolled back on error."""
    async with engine.begin() as conn:
        yield conn


@asynccontextmanager
async def driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """The pool's asyncpg connection itself, outside any transaction (each statement commits on
    its own), for the hottest single-statement queries: the per-request auth checks and the
    busiest reads. Executing through SQLAlchemy costs several times the CPU of the round trip
    (execution context, parameter processing, result wrapping); asyncpg runs ``$n`` SQL through
    its own per-connection prepared-statement cache.

    Keep only the statements inside the block. A server-reported error leaves the connection in
    sync; anything else (a cancelled request, a lost socket) may have cut a statement short, so
    the connection is closed rather than handed to the next request."""
    raw = await engine.raw_connection()
    try:
        yield raw.driver_connection
    except asyncpg.PostgresError:
        raise
    except BaseException:
        raw.invalidate()
        raise
    finally:
        raw.close()
