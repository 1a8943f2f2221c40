"""The invitee's side of team invitations (docs/auth.md "Invitations"): a user's own pending
invitations, whichever team their JWT is for (or none: a teamless token from signing in without
a live team, docs/spec.md §2.1), and their answer. The team's side (invite, list, revoke) is
under ``/v1/teams/{id}`` in ``teams.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from warren.cp.api.deps import Db, SettingsDep, UserSession
from warren.cp.api.models import Invitation
from warren.cp.http_errors import error_responses
from warren.cp.services import auth as auth_service
from warren.cp.services import team_invitations as service

router = APIRouter(prefix="/v1/invitations", tags=["teams"])

NEXT_CURSOR_HEADER = "X-Next-Cursor"


@router.get("", response_model=list[Invitation], responses=error_responses(400, 401, 403))
async def list_my_invitations(
    session: UserSession,
    engine: Db,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LISTED)] = service.MAX_LISTED,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> list[Invitation]:
    """The caller's pending invitations, newest first, `limit` (1-100) a page. When there are
    more, the `X-Next-Cursor` response header holds the `cursor` of the next page."""
    page = await service.list_mine(engine, session.ctx, limit=limit, cursor=cursor)
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return page.items


@router.post(
    "/{invitation_id}/accept",
    response_model=auth_service.JoinedTeam,
    responses=error_responses(401, 403, 404, 409, 429),
)
async def accept_invitation(
    invitation_id: str, session: UserSession, engine: Db, settings: SettingsDep
) -> auth_service.JoinedTeam:
    """Join the team with the invitation's role. The answer is the team and `token`, a fresh
    JWT for it (what `POST /v1/auth/switch-team` would give). An unknown, expired, revoked or
    another user's invitation is 404; 429 `quota_exceeded` when the caller already belongs to
    100 teams."""
    inv = service.parse_invitation_id(invitation_id)
    return await auth_service.accept_invitation(engine, settings.jwt_secret, session.ctx, inv)


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
