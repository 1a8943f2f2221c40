"""Request dependencies: the app's state and the three auth kinds (docs/spec.md §2.0, docs/design.md §4).

The checks themselves are :func:`warren.cp.services.authn.authenticate` (one query re-reads the
user, the membership, the team's ``deleted_at`` and ``is_admin`` on every request); these
dependencies only read the credentials from the headers and apply the per-team rate limit.

The one exception to "the token's team must be live and the user a member" is
:data:`UserSession`, used only by the routes a user needs to find or make a team
(``GET/POST /v1/teams``, ``POST /v1/auth/switch-team``, ``/v1/invitations…``, ``GET
/v1/users/me``) and by ``/v1/teams/{id}…`` (whose own checks give SPEC's 404/403 answers, and
403 ``no_team`` to a teamless token): there the request proceeds with ``ctx.team_id = None``
when the token's team is deleted, the membership is gone or the token is teamless (signed in
with no live team), so such a user can still answer invitations, list, create and switch
teams. Every other route refuses a teamless token with 403 ``no_team``. See docs/auth.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.config import Settings
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.security import credentials
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services.authn import authenticate, authenticate_session, throttle
from warren.cp.services.context import AuthContext
from warren.cp.state import AppState, state_of
from warren.cp.state import sign_in_attempt as sign_in_attempt  # for cp/api/auth.py and oauth.py
from warren.cp.store import LayerStore
from warren.errors import Forbidden


# ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a worker thread, and that
# thread hop would cost more than everything else in a cached authenticated read.
async def get_state(request: Request) -> AppState:
    return state_of(request)


State = Annotated[AppState, Depends(get_state)]


async def get_engine(request: Request) -> AsyncEngine:
    return state_of(request).engine


async def get_app_settings(request: Request) -> Settings:
    return state_of(request).settings


async def get_pool(request: Request) -> HostClientPool:
    return state_of(request).pool


async def get_scheduler(request: Request) -> Scheduler:
    return state_of(request).scheduler


async def get_ca(request: Request) -> CertificateAuthority:
    return state_of(request).ca


async def get_store(request: Request) -> LayerStore:
    return state_of(request).store


Db = Annotated[AsyncEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
Pool = Annotated[HostClientPool, Depends(get_pool)]
Sched = Annotated[Scheduler, Depends(get_scheduler)]
CA = Annotated[CertificateAuthority, Depends(get_ca)]
Store = Annotated[LayerStore, Depends(get_store)]

# Declared through FastAPI's security classes so the OpenAPI document lists both schemes.
_bearer_scheme = HTTPBearer(auto_error=False, description="User JWT from signup/login/switch-team")
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="Team API key (wrn_…)")


# The schemes are direct dependencies of each auth dependency rather than of a shared credentials
# dependency: every dependency FastAPI resolves costs a request about as much Python as the
# whole API-key check does.
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]
ApiKey = Annotated[str | None, Depends(_api_key_scheme)]


def _credentials(
    request: Request, bearer: HTTPAuthorizationCredentials | None, api_key: str | None
) -> credentials.Credentials:
    return credentials.from_headers(api_key, bearer.credentials if bearer else None, request.headers)


async def current_user(request: Request, bearer: Bearer, api_key: ApiKey) -> AuthContext:
    state = state_of(request)
    creds = _credentials(request, bearer, api_key)
    ctx = await authenticate(state.engine, creds, require_user=True, jwt_secret=state.settings.jwt_secret)
    return throttle(state.team_limiter, ctx)


async def team_context(request: Request, bearer: Bearer, api_key: ApiKey) -> AuthContext:
    state = state_of(request)
    creds = _credentials(request, bearer, api_key)
    ctx = await authenticate(state.engine, creds, require_user=False, jwt_secret=state.settings.jwt_secret)
    return throttle(state.team_limiter, ctx)


async def admin_user(ctx: Annotated[AuthContext, Depends(current_user)]) -> AuthContext:
    if not ctx.is_admin:
        raise Forbidden("admin access required")
    return ctx


@dataclass(frozen=True)
class JwtSession:
    """A verified user whose token's team may be gone: ``ctx.team_id`` is None then.
    ``token_team_id`` is the team the JWT names (for docs/spec.md §2.4's path-equals-JWT-team rule),
    None for a teamless token."""

    ctx: AuthContext
    token_team_id: uuid.UUID | None


async def user_session(request: Request, bearer: Bearer, api_key: ApiKey) -> JwtSession:
    state = state_of(request)
    creds = _credentials(request, bearer, api_key)
    ctx, token_team_id = await authenticate_session(state.engine, creds, jwt_secret=state.settings.jwt_secret)
    throttle(state.team_limiter, ctx)
    return JwtSession(ctx=ctx, token_team_id=token_team_id)


CurrentUser = Annotated[AuthContext, Depends(current_user)]
TeamContext = Annotated[AuthContext, Depends(team_context)]
AdminUser = Annotated[AuthContext, Depends(admin_user)]
UserSession = Annotated[JwtSession, Depends(user_session)]

# The error statuses every authenticated route can answer, for ``responses=``: 429 is the
# per-team request rate limit.
AUTH_ERRORS: tuple[int, ...] = (401, 403, 429)
