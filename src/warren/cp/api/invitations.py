"""The invitee's side of team invitations (docs/auth.md "Invitations"): a user's own pending
invitations, whichever team their JWT is for, and their answer. The team's side (invite, list,
revoke) is under ``/v1/teams/{id}`` in ``teams.py``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from warren.cp.api.deps import Db, UserSession
from warren.cp.api.models import Invitation, TeamWithRole
from warren.cp.http_errors import error_responses
from warren.cp.services import team_invitations as service

router = APIRouter(prefix="/v1/invitations", tags=["teams"])


@router.get("", response_model=list[Invitation], responses=error_responses(401, 403))
async def list_my_invitations(session: UserSession, engine: Db) -> list[Invitation]:
    """The caller's pending invitations, newest first (at most 100)."""
    return await service.list_mine(engine, session.ctx)


@router.post(
    "/{invitation_id}/accept",
    response_model=TeamWithRole,
    responses=error_responses(401, 403, 404, 409, 429),
)
async def accept_invitation(invitation_id: str, session: UserSession, engine: Db) -> TeamWithRole:
    """Join the team with the invitation's role (then `POST /v1/auth/switch-team` to act in it).
    An unknown, expired, revoked or another user's invitation is 404; 429 `quota_exceeded` when
    the caller already belongs to 100 teams."""
    return await service.accept(engine, session.ctx, service.parse_invitation_id(invitation_id))


@router.post(
    "/{invitation_id}/decline",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404),
)
async def decline_invitation(invitation_id: str, session: UserSession, engine: Db) -> Response:
    """Refuse the invitation; it is deleted."""
    await service.decline(engine, session.ctx, service.parse_invitation_id(invitation_id))
    return Response(status_code=204)
