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
from collections.abc import Mapping
from typing import Any, Protocol

from warren.cp.db.engine import Conn, fetch
from warren.errors import ServiceUnavailable

Host = Mapping[Any, Any]


class Scheduler(Protocol):
    async def select_host(
        self,
        conn: Conn,
        team_id: uuid.UUID,
        is_byoc: bool,
        *,
        required_host: uuid.UUID | None = None,
    ) -> Host:
        """Pick the host for a new sandbox of ``team_id``; raise ServiceUnavailable if none.

        ``required_host`` narrows the choice to one host (the one holding a snapshot's files);
        it must still be eligible for the team."""
        ...


# Ordered by age (ties by id) so the rotation is stable as hosts come and go. Runs on every
# create: plain SQL, on whichever connection the caller holds.
_ELIGIBLE = """
    SELECT * FROM hosts
    WHERE status = 'online' AND address <> ''
      AND CASE WHEN $2 THEN type = 'byoc' AND team_id = $1 ELSE type = 'regular' END
    ORDER BY created_at, id
"""


async def eligible_hosts(conn: Conn, team_id: uuid.UUID, is_byoc: bool) -> list[Host]:
    return await fetch(conn, _ELIGIBLE, team_id, is_byoc)


class RoundRobinScheduler:
    def __init__(self) -> None:
        # itertools.count is advanced without an await in between, so concurrent creates in one
        # event loop each get their own slot.
        self._counters: dict[uuid.UUID | None, itertools.count[int]] = {}

    async def select_host(
        self,
        conn: Conn,
        team_id: uuid.UUID,
        is_byoc: bool,
        *,
        required_host: uuid.UUID | None = None,
    ) -> Host:
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
