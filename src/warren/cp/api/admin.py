"""Platform-admin routes (docs/spec.md §2.10): JWT plus ``users.is_admin`` from the DB."""

from __future__ import annotations

from fastapi import APIRouter, Response

from warren.cp.api.deps import AdminUser, Db
from warren.cp.api.models import ByocRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import teams as teams_service

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.put(
    "/teams/{team_id}/byoc",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 401, 403, 404, 413),
)
async def set_team_byoc(team_id: str, body: ByocRequest, ctx: AdminUser, engine: Db) -> Response:
    """Enable BYOC for a team (one-way; `enabled: false` is refused)."""
    await teams_service.set_byoc(engine, ctx, teams_service.parse_team_id(team_id), body.enabled)
    return Response(status_code=204)
