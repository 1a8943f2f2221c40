"""Limits and quotas (issue 11): platform maxima and default quotas for platform admins, per-team
quotas set by platform admins, and a team's usage against its quotas for its members. Rules
live in ``warren.cp.services.limits``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from warren.cp.api.deps import AUTH_ERRORS, AdminUser, Db, SettingsDep, TeamContext
from warren.cp.api.models import INT32_MAX, StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import limits as svc
from warren.cp.services.teams import parse_team_id
from warren.errors import Forbidden

router = APIRouter(prefix="/v1", tags=["limits"])

_Value = int | None


def _field(description: str) -> _Value:
    return Field(default=None, le=INT32_MAX, description=description)  # type: ignore[no-any-return]


class PlatformLimitsRequest(StrictRequest):
    """Only the keys sent change; ``null`` returns a key to its built-in default."""

    max_vcpus: _Value = _field("vCPUs per sandbox (>= 1)")
    max_memory_mb: _Value = _field("memory per sandbox, MiB (>= 16)")
    max_disk_mb: _Value = _field("disk per sandbox, MiB (>= 16)")
    max_timeout_sec: _Value = _field("inactivity timeout per sandbox, seconds (>= 1)")
    quota_sandboxes: _Value = _field("default team quota: concurrent sandboxes")
    quota_vcpus: _Value = _field("default team quota: total vCPUs")
    quota_memory_mb: _Value = _field("default team quota: total memory, MiB")
    quota_snapshots: _Value = _field("default team quota: snapshots")
    quota_snapshot_mb: _Value = _field("default team quota: total snapshot size, MiB")
    quota_store_mb: _Value = _field("default team quota: the team's layers in the template store, MiB")


class TeamQuotasRequest(StrictRequest):
    """Only the quotas sent change; ``null`` returns a quota to the platform default."""

    sandboxes: _Value = _field("concurrent sandboxes")
    vcpus: _Value = _field("total vCPUs")
    memory_mb: _Value = _field("total memory, MiB")
    snapshots: _Value = _field("snapshots")
    snapshot_mb: _Value = _field("total snapshot size, MiB")
    store_mb: _Value = _field("the team's layers in the template store, MiB")


def _sent(body: StrictRequest) -> dict[str, int | None]:
    return {k: getattr(body, k) for k in body.model_fields_set}


@router.get("/admin/limits", response_model=svc.PlatformLimitsModel, responses=error_responses(*AUTH_ERRORS))
async def get_limits(ctx: AdminUser, db: Db, settings: SettingsDep) -> svc.PlatformLimitsModel:
    """Platform maxima per sandbox and default team quotas in force (platform admins)."""
    return await svc.get_platform_limits(db, settings)


@router.put(
    "/admin/limits", response_model=svc.PlatformLimitsModel, responses=error_responses(400, *AUTH_ERRORS, 413)
)
async def put_limits(
    body: PlatformLimitsRequest, ctx: AdminUser, db: Db, settings: SettingsDep
) -> svc.PlatformLimitsModel:
    """Change platform maxima and default quotas (platform admins). Takes effect on the next
    create; existing sandboxes keep their sizes."""
    return await svc.set_platform_limits(db, settings, ctx, _sent(body))


@router.get(
    "/admin/teams/{team_id}/quotas",
    response_model=svc.TeamQuotaReport,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_team_quotas_admin(
    team_id: str, ctx: AdminUser, db: Db, settings: SettingsDep
) -> svc.TeamQuotaReport:
    """Any team's quotas and usage (platform admins)."""
    return await svc.team_report(db, settings, parse_team_id(team_id))


@router.put(
    "/admin/teams/{team_id}/quotas",
    response_model=svc.TeamQuotaReport,
    responses=error_responses(400, *AUTH_ERRORS, 404, 413),
)
async def put_team_quotas(
    team_id: str, body: TeamQuotasRequest, ctx: AdminUser, db: Db, settings: SettingsDep
) -> svc.TeamQuotaReport:
    """Raise or lower a team's quotas (platform admins)."""
    return await svc.set_team_quotas(db, settings, ctx, parse_team_id(team_id), _sent(body))


@router.get(
    "/teams/{team_id}/quotas",
    response_model=svc.TeamQuotaReport,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_team_quotas(
    team_id: str, ctx: TeamContext, db: Db, settings: SettingsDep
) -> svc.TeamQuotaReport:
    """The team's quotas, its usage and the per-sandbox maxima: for its members (JWT of that
    team) and its API keys."""
    tid = parse_team_id(team_id)
    if tid != ctx.team_id:
        raise Forbidden("not your team; use switch-team first")
    return await svc.team_report(db, settings, tid)
