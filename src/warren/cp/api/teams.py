"""Team routes (docs/spec.md §2.4, §7). Every ``/v1/teams/{id}`` route requires ``{id}`` to be the
JWT's team (403 otherwise, before any team lookup); the service then re-checks the team and the
caller's role in the database."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from warren.cp.api.deps import Db, JwtSession, SettingsDep, State, UserSession
from warren.cp.api.models import (
    AddMemberRequest,
    Invitation,
    Member,
    RoleRequest,
    TeamDetail,
    TeamNameRequest,
    TeamWithRole,
)
from warren.cp.http_errors import error_responses
from warren.cp.services import team_deletion
from warren.cp.services import team_invitations as invitations
from warren.cp.services import teams as service
from warren.cp.services.authn import teamless
from warren.errors import Forbidden

router = APIRouter(prefix="/v1/teams", tags=["teams"])

_AUTH = (401, 403)


def _jwt_team(session: JwtSession, team_id: str) -> uuid.UUID:
    if session.token_team_id is None:
        raise teamless()  # a teamless token names no team to act in, whichever the path names
    tid = service.parse_team_id(team_id)
    if tid != session.token_team_id:
        raise Forbidden("JWT team does not match requested team; use switch-team first")
    return tid


@router.get("", response_model=list[TeamWithRole], responses=error_responses(*_AUTH))
async def list_teams(session: UserSession, engine: Db) -> list[TeamWithRole]:
    """The caller's live teams with their role, in join order."""
    return await service.list_teams(engine, session.ctx)


@router.post(
    "", status_code=201, response_model=TeamWithRole, responses=error_responses(400, *_AUTH, 413, 429)
)
async def create_team(
    body: TeamNameRequest, session: UserSession, engine: Db, settings: SettingsDep
) -> TeamWithRole:
    """Create a team owned by the caller (429 `quota_exceeded` past the teams one user may
    own). Use switch-team to act in it."""
    return await service.create_team(engine, settings, session.ctx, body.name)


@router.get("/{team_id}", response_model=TeamDetail, responses=error_responses(400, *_AUTH, 404))
async def get_team(team_id: str, session: UserSession, engine: Db) -> TeamDetail:
    """The team and its members."""
    return await service.get_team(engine, session.ctx, _jwt_team(session, team_id))


@router.patch(
    "/{team_id}", status_code=204, response_class=Response, responses=error_responses(400, *_AUTH, 404, 413)
)
async def rename_team(team_id: str, body: TeamNameRequest, session: UserSession, engine: Db) -> Response:
    """Rename (owner or admin)."""
    tid = _jwt_team(session, team_id)
    await service.rename_team(engine, session.ctx, tid, body.name)
    return Response(status_code=204)


@router.delete(
    "/{team_id}", status_code=204, response_class=Response, responses=error_responses(400, *_AUTH, 404)
)
async def delete_team(team_id: str, session: UserSession, engine: Db, state: State) -> Response:
    """Soft delete (owner only): stops the team's sandboxes and builds, removes its templates;
    its API keys and JWTs stop working."""
    tid = _jwt_team(session, team_id)
    await team_deletion.delete_team(engine, state.pool, session.ctx, tid, runner=state.builds)
    return Response(status_code=204)


@router.get("/{team_id}/members", response_model=list[Member], responses=error_responses(400, *_AUTH, 404))
async def list_members(team_id: str, session: UserSession, engine: Db) -> list[Member]:
    """Members in join order."""
    return await service.list_members(engine, session.ctx, _jwt_team(session, team_id))


@router.post(
    "/{team_id}/members",
    status_code=201,
    response_model=Invitation,
    responses=error_responses(400, *_AUTH, 404, 409, 413, 429),
)
async def add_member(team_id: str, body: AddMemberRequest, session: UserSession, engine: Db) -> Invitation:
    """Invite an existing user by email (owner or admin) to join as `role` (`member`, or
    `admin`); they become a member only once they accept (`POST /v1/invitations/{id}/accept`).
    Inviting them again replaces the invitation; 409 `already_member`; 429
    `too_many_invitations` past the team's pending bound."""
    tid = _jwt_team(session, team_id)
    return await invitations.invite(engine, session.ctx, tid, body.email or "", body.role)


@router.get(
    "/{team_id}/invitations", response_model=list[Invitation], responses=error_responses(400, *_AUTH, 404)
)
async def list_invitations(team_id: str, session: UserSession, engine: Db) -> list[Invitation]:
    """The team's pending invitations, oldest first (owner or admin)."""
    return await invitations.list_for_team(engine, session.ctx, _jwt_team(session, team_id))


@router.delete(
    "/{team_id}/invitations/{invitation_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, *_AUTH, 404),
)
async def revoke_invitation(team_id: str, invitation_id: str, session: UserSession, engine: Db) -> Response:
    """Withdraw a pending invitation (owner or admin)."""
    tid = _jwt_team(session, team_id)
    await invitations.revoke(engine, session.ctx, tid, invitations.parse_invitation_id(invitation_id))
    return Response(status_code=204)


@router.patch(
    "/{team_id}/members/{user_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, *_AUTH, 404, 413),
)
async def set_member_role(
    team_id: str, user_id: str, body: RoleRequest, session: UserSession, engine: Db
) -> Response:
    """Change a member's role between `admin` and `member` (owner or admin; never the owner)."""
    tid = _jwt_team(session, team_id)
    # The service checks the new role before the caller's role, as docs/spec.md §2.4 orders.
    await service.set_member_role(engine, session.ctx, tid, service.parse_user_id(user_id), body.role or "")
    return Response(status_code=204)


@router.delete(
    "/{team_id}/members/{user_id}",
    status_code=204,
    response_class=Response,
    responses={
        200: {"model": service.MemberRemoval, "description": "Removed, with `?revoke_keys=true`"},
        **error_responses(400, *_AUTH, 404),
    },
)
async def remove_member(
    team_id: str, user_id: str, session: UserSession, engine: Db, revoke_keys: bool = False
) -> Response:
    """Remove a member (owner or admin; never the owner): 204, as docs/spec.md §2.4 has it. The
    API keys they created are the team's and keep working (`GET /v1/api-keys` shows each key's
    `created_by`) unless `?revoke_keys=true`: then they are revoked in the same transaction,
    and the answer is 200 with what was revoked (`revoked_keys`)."""
    tid = _jwt_team(session, team_id)
    target = service.parse_user_id(user_id)
    done = await service.remove_member(engine, session.ctx, tid, target, revoke_keys=revoke_keys)
    if not revoke_keys:
        return Response(status_code=204)
    return Response(done.model_dump_json(), media_type="application/json")


@router.post(
    "/{team_id}/leave", status_code=204, response_class=Response, responses=error_responses(400, *_AUTH, 404)
)
async def leave_team(team_id: str, session: UserSession, engine: Db) -> Response:
    """Leave the team (admins and members; the owner must delete it instead). The API keys the
    leaver created stay the team's."""
    await service.leave_team(engine, session.ctx, _jwt_team(session, team_id))
    return Response(status_code=204)
