"""Egress ranges (issue 11): the operator's named ranges, and which are open for a team
(platform admins). Rules live in ``warren.cp.services.egress``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from warren.cp.api.deps import AUTH_ERRORS, AdminUser, Db, SettingsDep
from warren.cp.api.models import StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import egress as svc
from warren.cp.services.teams import parse_team_id

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class TeamEgressRequest(StrictRequest):
    ranges: list[str] = Field(
        max_length=svc.MAX_NAMES, description="names from WARREN_EGRESS_RANGES; [] closes them all"
    )


@router.get("/egress-ranges", response_model=svc.EgressCatalog, responses=error_responses(*AUTH_ERRORS))
async def list_egress_ranges(ctx: AdminUser, settings: SettingsDep) -> svc.EgressCatalog:
    """The named ranges this control plane offers (``WARREN_EGRESS_RANGES``)."""
    return svc.catalog_model(svc.catalog_of(settings))


@router.get(
    "/teams/{team_id}/egress",
    response_model=svc.TeamEgress,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_team_egress(team_id: str, ctx: AdminUser, db: Db, settings: SettingsDep) -> svc.TeamEgress:
    """The ranges open for a team's sandboxes, past the default deny of private addresses."""
    catalog = svc.catalog_of(settings)
    return await svc.get_team_egress(db, ctx, catalog, parse_team_id(team_id))


@router.put(
    "/teams/{team_id}/egress",
    response_model=svc.TeamEgress,
    responses=error_responses(400, *AUTH_ERRORS, 404, 413),
)
async def put_team_egress(
    team_id: str, body: TeamEgressRequest, ctx: AdminUser, db: Db, settings: SettingsDep
) -> svc.TeamEgress:
    """Open exactly these named ranges for the team's sandboxes created from now on (400 for a
    name that is not configured)."""
    catalog = svc.catalog_of(settings)
    return await svc.set_team_egress(db, ctx, catalog, parse_team_id(team_id), body.ranges)
