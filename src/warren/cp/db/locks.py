"""PostgreSQL advisory locks keyed on a row's UUID, so CP replicas coordinate without a row lock
held across an agent call. Each use has its own namespace (the first of the two int keys)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

# HostMonitor's per-host reconciliation (transaction-scoped, try-lock).
MONITOR_NS = 0x57524E  # "WRN"
# One host delete at a time per host (session-scoped, try-lock).
HOST_DELETE_NS = 0x575244  # "WRD"
# One layer garbage collection at a time across replicas (session-scoped, try-lock).
LAYER_GC_NS = 0x57524C  # "WRL"
# A layer's record against its collection (transaction-scoped; keyed on the digest).
LAYER_NS = 0x57524B  # "WRK"
# One change of a sandbox's egress rules at a time (session-scoped, try-lock).
EGRESS_NS = 0x575245  # "WRE"


def key_of(row_id: uuid.UUID) -> int:
    """A signed 32-bit int from the id, the second key of ``pg_*advisory*lock(int, int)``.
    Two ids may share a key: that only makes unrelated holders wait for each other."""
    return int.from_bytes(row_id.bytes[:4], "big", signed=True)


@asynccontextmanager
async def held(engine: AsyncEngine, namespace: int, row_id: uuid.UUID) -> AsyncIterator[bool]:
    """Try to take a session-level advisory lock for the block, on a connection of its own (so
    the block may commit, roll back and call agents freely); yields whether it was taken — a
    caller that did not get it must not do the work. Never waits, so callers do not pile up on
    pool connections. PostgreSQL drops the lock if the connection dies; if anything fails while
    the lock may be held, the connection is thrown away rather than pooled with it."""
    key = key_of(row_id)
    async with engine.connect() as conn:
        try:
            got = bool((await conn.execute(sa.select(sa.func.pg_try_advisory_lock(namespace, key)))).scalar())
            await conn.commit()
        except BaseException:
            await conn.invalidate()
            raise
        if not got:
            yield False
            return
        try:
            yield True
        finally:
            try:
                await conn.execute(sa.select(sa.func.pg_advisory_unlock(namespace, key)))
                await conn.commit()
            except BaseException:
                await conn.invalidate()
                raise
