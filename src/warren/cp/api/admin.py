"""Platform-admin routes (docs/spec.md §2.10): JWT plus ``users.is_admin`` from the DB."""

from __future__ import annotations

from fastapi import APIRouter, Response

from warren.cp.api.deps import AdminUser, Db
from warren.cp.api.models import ByocRequest, StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import teams as teams_service
from warren.cp.services import users as users_service

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


class VerifyEmailRequest(StrictRequest):
    email: str


@router.post(
    "/users/verify-email",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 401, 403, 404),
)
async def verify_user_email(body: VerifyEmailRequest, ctx: AdminUser, engine: Db) -> Response:
    """Mark the account holding `email` verified (a platform admin vouches for the address, as
    `warren admin user verify EMAIL` does): it may then accept team invitations."""
    await users_service.admin_verify(engine, ctx, body.email)
    return Response(status_code=204)
