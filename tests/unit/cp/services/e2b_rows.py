"""Rows for the lifetime and list tests: a team, its host and sandboxes, straight into a real
database (no agent: the rules under test are the database's)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import hosts, sandboxes, teams, users


async def team_and_host(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    u, t, h = ids.new_uuid(), ids.new_uuid(), ids.new_uuid()
    now = clock.now()
    async with engine.begin() as conn:
        await conn.execute(users.insert().values(id=u, email=f"{u.hex}@example.com", name="u"))
        await conn.execute(teams.insert().values(id=t, name="t", slug=t.hex))
        await conn.execute(
            hosts.insert().values(
                id=h, type="regular", status="online", address="127.0.0.1:1", created_by=u,
                created_at=now, updated_at=now, last_heartbeat_at=now,
            )
        )  # fmt: skip
    return t, h


async def sandbox(
    engine: AsyncEngine,
    team: uuid.UUID,
    host: uuid.UUID,
    *,
    status: str = "running",
    end_in_s: float | None = None,
    metadata: dict[str, str] | None = None,
    started_at: datetime | None = None,
    **kw: Any,
) -> uuid.UUID:
    s = ids.new_uuid()
    now = clock.now()
    end_at = None if end_in_s is None else now + timedelta(seconds=end_in_s)
    async with engine.begin() as conn:
        await conn.execute(
            sandboxes.insert().values(
                id=s, team_id=team, host_id=host, status=status, created_at=now, last_updated=now,
                started_at=started_at or now, end_at=end_at, metadata=json.loads(json.dumps(metadata or {})),
                **kw,
            )
        )  # fmt: skip
    return s
