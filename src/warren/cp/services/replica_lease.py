"""This control-plane replica's liveness lease (docs/hosts.md, "Several control-plane replicas").

Each ``warren cp`` process takes an id at start and holds a row in ``replica_leases``: taken
before the app serves, its ``expires_at`` moved ``replica_lease_ttl_s`` ahead every
``replica_lease_interval_s`` by this worker, deleted at a clean shutdown. A create records its
replica on the ``pending`` row it reserves (``services/sandboxes.py``), so the host monitor can
settle at once the pending rows of a replica whose lease is gone or expired (a replica
``kill -9``-ed mid-create): nobody is left to finish them.

The times are ``warren.clock``'s, as every other rule between replicas (heartbeats): replicas'
clocks must agree to well within the TTL minus the interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import weakref
from datetime import timedelta

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.aio import every
from warren.config import Settings
from warren.cp.background import Worker
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import replica_leases

log = logging.getLogger("warren.replica_lease")

# Leases expired this long ago are deleted by a replica that starts: gone and expired mean the
# same to the monitor, and a dead replica's row is only kept a while for operators to see.
PURGE_AFTER_S = 3600.0

# Each replica's lease by its database engine (one per app), so the create path finds the
# lease of the replica it runs in from the engine every service already gets.
_BY_ENGINE: weakref.WeakKeyDictionary[AsyncEngine, ReplicaLease] = weakref.WeakKeyDictionary()


def owner_of(engine: AsyncEngine) -> uuid.UUID | None:
    """The id a create through ``engine`` records on its pending row: its replica's
    (:attr:`ReplicaLease.owner`), or None when it holds no live lease."""
    lease = _BY_ENGINE.get(engine)
    return lease.owner if lease is not None else None


class ReplicaLease(Worker):
    """This replica's id and the worker renewing its lease."""

    task_name = "replica-lease"

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.id: uuid.UUID = ids.new_uuid()
        self.interval_s = settings.replica_lease_interval_s
        self.ttl_s = settings.replica_lease_ttl_s
        # time.monotonic() of the last renewal that committed; None before the first.
        self._renewed_at: float | None = None
        _BY_ENGINE[engine] = self

    @property
    def owner(self) -> uuid.UUID | None:
        """The id a create records on its row: this replica's, while its lease is surely live
        (renewed less than a TTL minus an interval ago, by this process's own clock, which
        tests do not move). None otherwise (the database was unreachable, say): the row then
        settles by the grace rule, never early."""
        if self._renewed_at is None or time.monotonic() - self._renewed_at > self.ttl_s - self.interval_s:
            return None
        return self.id

    async def renew(self) -> None:
        """Take or move the lease ``ttl_s`` ahead (it comes back if it was purged)."""
        now = clock.now()
        started = time.monotonic()
        stmt = insert(replica_leases).values(
            id=self.id,
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=now,
            expires_at=now + timedelta(seconds=self.ttl_s),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[replica_leases.c.id], set_={"expires_at": stmt.excluded.expires_at}
        )
        async with autocommit(self.engine) as conn:
            await conn.execute(stmt)
        self._renewed_at = started

    async def acquire(self) -> None:
        """The first renewal, before the app serves, and the purge of leases long expired; a
        database that cannot be reached yet is logged and left to the worker (creates record no
        owner meanwhile)."""
        try:
            async with asyncio.timeout(self.ttl_s / 2):
                await self.renew()
                cutoff = clock.now() - timedelta(seconds=PURGE_AFTER_S)
                async with autocommit(self.engine) as conn:
                    await conn.execute(replica_leases.delete().where(replica_leases.c.expires_at < cutoff))
        except Exception:  # the CP starts without its database, as it always has
            log.warning("replica lease: first renewal failed; retrying every %.0f s", self.interval_s)
        else:
            log.info("replica lease taken replica=%s ttl=%.0fs", self.id, self.ttl_s)

    async def _loop(self) -> None:
        await every(self.interval_s, self.renew, log, "replica-lease")

    async def release(self) -> None:
        """Delete the lease (clean shutdown): this replica's pending rows left by cancelled
        requests settle at the next monitor pass. A failure is logged: the lease then expires."""
        self._renewed_at = None
        try:
            async with asyncio.timeout(self.ttl_s / 2), autocommit(self.engine) as conn:
                await conn.execute(replica_leases.delete().where(replica_leases.c.id == self.id))
        except Exception:
            log.warning("replica lease: release failed; it expires in %.0f s", self.ttl_s)
