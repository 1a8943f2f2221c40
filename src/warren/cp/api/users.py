"""The caller's own profile and user search (docs/spec.md §2.1, §2.3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from warren.cp.api.deps import CurrentUser, Db, SettingsDep, UserSession
from warren.cp.api.models import UserMatch
from warren.cp.http_errors import error_responses
from warren.cp.services import email_verification
from warren.cp.services import users as service

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.get("/me", response_model=service.Profile, responses=error_responses(401, 429))
async def my_profile(session: UserSession) -> service.Profile:
    """Who the token belongs to, read from the database: email, name, `is_admin`, and the team it
    acts for with the caller's role (both null for a teamless token, or a team gone or left)."""
    return service.profile(session.ctx)


@router.get("/search", response_model=list[UserMatch], responses=error_responses(400, 401, 403))
async def search_users(ctx: CurrentUser, engine: Db, email: Annotated[str, Query()] = "") -> list[UserMatch]:
    """Up to 10 users whose email starts with `email` (≥ 3 chars, must contain `@`), by email,
    each with its id and whether its email is verified (only a verified one can accept)."""
    return await service.search_by_email_prefix(engine, ctx, email)


@router.post(
    "/me/verify-email",
    status_code=202,
    response_class=Response,
    responses=error_responses(401, 409, 429, 503),
)
async def resend_verification(session: UserSession, engine: Db, settings: SettingsDep) -> Response:
    """Mail the caller a fresh verification link (5 mails per account an hour, the sign-up's
    included). 409 `already_verified`, or `email_not_configured` when the platform sends no email
    (an operator verifies with `warren admin user verify EMAIL`); 503 when the mail server fails."""
    await email_verification.resend(engine, settings, session.ctx)
    return Response(status_code=202)
