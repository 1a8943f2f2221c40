"""Host selection for new sandboxes (SPEC §4.2 as amended by DESIGN §4).

Eligible hosts: ``online`` with a non-empty address. A BYOC team uses only its own ``byoc``
hosts and never falls back to platform hosts; every other team uses only ``regular`` hosts.
``RoundRobinScheduler`` keeps one counter per pool (one per BYOC team, one for the platform), so
interleaved requests from different teams do not skew each other's rotation. The counters are
per CP process: with several replicas each rotates on its own, which still spreads load.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from warren.cp.db.tables import hosts
from warren.errors import ServiceUnavailable


class Scheduler(Protocol):
    async def select_host(
        self,
        conn: AsyncConnection,
        team_id: uuid.UUID,
        is_byoc: bool,
        *,
        required_host: uuid.UUID | None = None,
    ) -> RowMapping:
        """Pick the host for a new sandbox of ``team_id``; raise ServiceUnavailable if none.

        ``required_host`` narrows the choice to one host (the one holding a snapshot's files);
        it must still be eligible for the team."""
        ...


async def eligible_hosts(conn: AsyncConnection, team_id: uuid.UUID, is_byoc: bool) -> list[RowMapping]:
    q = sa.select(hosts).where(hosts.c.status == "online", hosts.c.address != "")
    if is_byoc:
        q = q.where(hosts.c.type == "byoc", hosts.c.team_id == team_id)
    else:
        q = q.where(hosts.c.type == "regular")
    # Ordered by age (ties by id) so the rotation is stable as hosts come and go.
    rows = (await conn.execute(q.order_by(hosts.c.created_at, hosts.c.id))).mappings().all()
    return list(rows)


class RoundRobinScheduler:
    def __init__(self) -> None:
        # itertools.count is advanced without an await in between, so concurrent creates in one
        # event loop each get their own slot.
        self._counters: dict[uuid.UUID | None, itertools.count[int]] = {}

    async def select_host(
        self,
        conn: AsyncConnection,
        team_id: uuid.UUID,
        is_byoc: bool,
        *,
        required_host: uuid.UUID | None = None,
    ) -> RowMapping:
        candidates = await eligible_hosts(conn, team_id, is_byoc)
        if required_host is not None:
            candidates = [h for h in candidates if h["id"] == required_host]
            if not candidates:
                raise ServiceUnavailable(
                    "the host holding this snapshot's files is not online; "
                    "try again when it is back, or snapshot a sandbox on another host",
                    code="snapshot_host_unavailable",
                )
        if not candidates:
            msg = (
                "no online BYOC hosts available for team" if is_byoc else "no online platform hosts available"
            )
            raise ServiceUnavailable(msg, code="no_hosts_available")
        key = team_id if is_byoc else None
        counter = self._counters.setdefault(key, itertools.count())
        return candidates[next(counter) % len(candidates)]
