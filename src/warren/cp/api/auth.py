"""Auth routes: signup, login, switch-team (docs/spec.md §2.1). OAuth lives in ``oauth.py``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from warren.cp.api.deps import Db, SettingsDep, UserSession, sign_in_attempt
from warren.cp.api.models import AuthResult, LoginRequest, SignupRequest, SwitchTeamRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import auth as auth_service

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post(
    "/signup", status_code=201, response_model=AuthResult, responses=error_responses(400, 409, 413, 429)
)
async def signup(body: SignupRequest, request: Request, engine: Db, settings: SettingsDep) -> AuthResult:
    """Create an account and its default team; answers with a JWT for that team. Signups per
    client address are rate limited (429 ``rate_limited`` with ``Retry-After``). With SMTP
    configured the address is mailed a verification link (docs/auth.md "Verified emails")."""
    return await auth_service.signup(
        engine, settings.jwt_secret, email=body.email, password=body.password, name=body.name,
        attempt=sign_in_attempt(request), settings=settings,
    )  # fmt: skip


@router.post("/login", response_model=AuthResult, responses=error_responses(400, 401, 403, 413, 429))
async def login(body: LoginRequest, request: Request, engine: Db, settings: SettingsDep) -> AuthResult:
    """Password login. The token's team is the default team, else the earliest-joined one.
    Attempts per account and per client address are rate limited (429 with ``Retry-After``)."""
    return await auth_service.login(
        engine, settings.jwt_secret, email=body.email, password=body.password,
        attempt=sign_in_attempt(request),
    )  # fmt: skip


@router.post("/switch-team", response_model=AuthResult, responses=error_responses(400, 401, 403, 404, 413))
async def switch_team(
    body: SwitchTeamRequest, session: UserSession, engine: Db, settings: SettingsDep
) -> AuthResult:
    """A fresh JWT for another team the caller belongs to (role and name re-read from the DB).
    Works even when the current token's team was deleted."""
    return await auth_service.switch_team(engine, settings.jwt_secret, session.ctx, body.team_id or "")
