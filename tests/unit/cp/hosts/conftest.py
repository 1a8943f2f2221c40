"""Fixtures for host-subsystem unit tests: a real database (``db_url``) and row factories."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from warren import clock, ids
from warren.cp.db.tables import hosts, sandboxes, teams, users, users_teams


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", "audit_logs") as e:
        yield e


class Rows:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def user(self, *, admin: bool = False) -> uuid.UUID:
        u = ids.new_uuid()
        async with self.engine.begin() as conn:
            await conn.execute(
                users.insert().values(id=u, email=f"{u.hex}@example.com", name="u", is_admin=admin)
            )
        return u

    async def team(self, *, byoc: bool = False, owner: uuid.UUID | None = None) -> uuid.UUID:
        t = ids.new_uuid()
        async with self.engine.begin() as conn:
            await conn.execute(teams.insert().values(id=t, name="t", slug=t.hex, is_byoc=byoc))
            if owner is not None:
                await conn.execute(users_teams.insert().values(user_id=owner, team_id=t, role="owner"))
        return t

    async def host(
        self,
        creator: uuid.UUID,
        *,
        type: str = "regular",
        team_id: uuid.UUID | None = None,
        status: str = "online",
        address: str = "127.0.0.1:1",
        heartbeat_age_s: float | None = 0,
        created_offset_s: float = 0,
    ) -> uuid.UUID:
        h = ids.new_uuid()
        now = clock.now()
        async with self.engine.begin() as conn:
            await conn.execute(
                hosts.insert().values(
                    id=h,
                    type=type,
                    team_id=team_id,
                    status=status,
                    address=address,
                    created_by=creator,
                    created_at=now + timedelta(seconds=created_offset_s),
                    updated_at=now,
                    last_heartbeat_at=None
                    if heartbeat_age_s is None
                    else now - timedelta(seconds=heartbeat_age_s),
                )
            )
        return h

    async def sandbox(
        self, team: uuid.UUID, host: uuid.UUID, status: str = "running", **kw: Any
    ) -> uuid.UUID:
        s = ids.new_uuid()
        now = clock.now()
        async with self.engine.begin() as conn:
            await conn.execute(
                sandboxes.insert().values(
                    id=s, team_id=team, host_id=host, status=status, created_at=now, last_updated=now, **kw
                )
            )
        return s

    async def status(self, s: uuid.UUID) -> str:
        async with self.engine.connect() as conn:
            return str(
                (await conn.execute(sa.select(sandboxes.c.status).where(sandboxes.c.id == s))).scalar()
            )

    async def end_reason(self, s: uuid.UUID) -> str | None:
        async with self.engine.connect() as conn:
            q = sa.select(sandboxes.c.end_reason).where(sandboxes.c.id == s)
            return (await conn.execute(q)).scalar()

    async def host_status(self, h: uuid.UUID) -> str:
        async with self.engine.connect() as conn:
            return str((await conn.execute(sa.select(hosts.c.status).where(hosts.c.id == h))).scalar())


@pytest.fixture
def rows(engine: AsyncEngine) -> Rows:
    return Rows(engine)
