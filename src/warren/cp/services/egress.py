"""Named egress ranges (issue 11, D15): the one home of these rules.

Sandboxes reach no private, link-local, CGNAT, loopback or reserved address (the agents'
``WARREN-EGRESS`` chain, ``warren.agent.egress``). An operator names the private ranges a team
may reach in ``WARREN_EGRESS_RANGES`` (``corp=10.20.0.0/16,10.21.0.0/16;db=192.168.5.10/32``,
validated when the settings are read: a bad value stops the CP at start with its reason), and a
platform admin opens names for a team (``teams.egress_allow``). A create sends the team's CIDRs
in ``CreateSandboxRequest.egress_allow``; a change applies to sandboxes created after it.

A range may not contain the database's or the control plane's own address: a team given it
could reach PostgreSQL or the CP from its sandboxes. (The agents close the CP's address anyway;
the database's is one they cannot learn by themselves.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import teams
from warren.cp.services import audit
from warren.cp.services.context import AuthContext
from warren.egress_ranges import MAX_CIDRS, Catalog, parse_ranges
from warren.errors import Forbidden, InvalidRequest, NotFound

MAX_NAMES = 32


class EgressRange(BaseModel):
    name: str
    cidrs: list[str]


class EgressCatalog(BaseModel):
    ranges: list[EgressRange]


class TeamEgress(BaseModel):
    team_id: str
    ranges: list[str]  # the names opened for the team
    cidrs: list[str]  # what its new sandboxes may reach past the default deny


def catalog_of(settings: Settings) -> Catalog:
    """The operator's named ranges (``WARREN_EGRESS_RANGES``, parsed once per value)."""
    return parse_ranges(settings.egress_ranges)


def team_cidrs(catalog: Catalog, names: Sequence[str] | None) -> list[str]:
    """The CIDRs a create sends for a team's opened names (a name no longer configured opens
    nothing)."""
    out: dict[str, None] = {}
    for name in names or ():
        out.update(dict.fromkeys(catalog.get(name, ())))
    return list(out)[:MAX_CIDRS]


def catalog_model(catalog: Catalog) -> EgressCatalog:
    return EgressCatalog(ranges=[EgressRange(name=n, cidrs=list(c)) for n, c in catalog.items()])


def _require_admin(ctx: AuthContext) -> None:
    if not ctx.is_admin:
        raise Forbidden("admin access required")


async def get_team_egress(
    engine: AsyncEngine, ctx: AuthContext, catalog: Catalog, team_uuid: uuid.UUID
) -> TeamEgress:
    _require_admin(ctx)
    async with autocommit(engine) as conn:
        names = await conn.scalar(
            sa.select(teams.c.egress_allow).where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
        )
    if names is None:
        raise NotFound("team not found")
    return TeamEgress(team_id=ids.team_id(team_uuid), ranges=list(names), cidrs=team_cidrs(catalog, names))


async def set_team_egress(
    engine: AsyncEngine, ctx: AuthContext, catalog: Catalog, team_uuid: uuid.UUID, names: Sequence[str]
) -> TeamEgress:
    """Platform admins only: the team's opened ranges become exactly ``names`` (each must be
    configured). Sandboxes already running keep the ranges they were created with."""
    _require_admin(ctx)
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in catalog]
    if unknown:
        known = ", ".join(catalog) or "none are configured (WARREN_EGRESS_RANGES)"
        raise InvalidRequest(f"unknown egress range {unknown[0][:40]!r}; known: {known}")
    if len(wanted) > MAX_NAMES:
        raise InvalidRequest(f"at most {MAX_NAMES} egress ranges per team")
    cidrs = {c for n in wanted for c in catalog[n]}
    if len(cidrs) > MAX_CIDRS:
        raise InvalidRequest(f"these ranges hold {len(cidrs)} CIDRs; a sandbox takes at most {MAX_CIDRS}")
    async with transaction(engine) as conn:
        done = await conn.execute(
            sa.update(teams)
            .where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
            .values(egress_allow=wanted)
        )
        if done.rowcount == 0:
            raise NotFound("team not found")
        await audit.record(
            conn, ctx, team_id=team_uuid, action="update", resource_type="team_egress", scope="admin",
            resource_id=ids.team_id(team_uuid), metadata={"ranges": wanted},
        )  # fmt: skip
    return TeamEgress(team_id=ids.team_id(team_uuid), ranges=wanted, cidrs=team_cidrs(catalog, wanted))
