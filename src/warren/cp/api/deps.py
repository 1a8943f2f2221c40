"""Request dependencies: database, settings and the three auth kinds (SPEC §2.0, DESIGN §4).

A JWT's team and role are hints. Every authenticated request re-reads, in ONE query, the user,
their membership in the token's team (and its role), the team's ``deleted_at`` and the user's
``is_admin``. So a removed member or a soft-deleted team loses access on the very next request.

Outcomes for a JWT whose signature and expiry are fine:
- user row gone → 401 "invalid or expired token";
- token's team soft-deleted (or gone) → 401 "team has been deleted; sign in again" — the
  credential is bound to a team that no longer exists, so it is refused like a bad token;
- user no longer a member of the token's team → 403 "not a member of this team".

The one exception is :data:`UserSession`, used only by the routes a user needs to find or make
a team (``GET/POST /v1/teams``, ``POST /v1/auth/switch-team``) and by ``/v1/teams/{id}…``
(whose own checks give SPEC's 404/403 answers): there the request proceeds with
``ctx.team_id = None`` when the token's team is deleted or the membership is gone, so a user
who deleted their last team can still list, create and switch teams. See docs/auth.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.config import Settings
from warren.cp.db.engine import driver
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.security.api_keys import hash_api_key, looks_like_api_key
from warren.cp.security.ca import CertificateAuthority
from warren.cp.security.tokens import verify_user_jwt
from warren.cp.services.context import AuthContext
from warren.errors import Forbidden, Unauthorized


# ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a worker thread, and that
# thread hop would cost more than everything else in a cached authenticated read.
async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Db = Annotated[AsyncEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


# App-wide collaborators set up in the lifespan. Async so FastAPI resolves them on the event
# loop instead of hopping to its thread pool on every request.
async def get_pool(request: Request) -> HostClientPool:
    pool: HostClientPool = request.app.state.pool
    return pool


async def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


async def get_ca(request: Request) -> CertificateAuthority:
    ca: CertificateAuthority = request.app.state.ca
    return ca


Pool = Annotated[HostClientPool, Depends(get_pool)]
Sched = Annotated[Scheduler, Depends(get_scheduler)]
CA = Annotated[CertificateAuthority, Depends(get_ca)]

# Declared through FastAPI's security classes so the OpenAPI document lists both schemes.
_bearer_scheme = HTTPBearer(auto_error=False, description="User JWT from signup/login/switch-team")
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="Team API key (wrn_…)")

# The per-request checks below run on the raw driver connection (``warren.cp.db.engine.driver``):
# they are the hottest statements of the CP, and SQLAlchemy's execution machinery would cost
# several times their round trip in CPU.
_JWT_CHECK = """
    SELECT u.email, u.name, u.is_admin, ut.role, (t.id IS NOT NULL AND t.deleted_at IS NULL) AS team_live
    FROM users u
    LEFT JOIN users_teams ut ON ut.user_id = u.id AND ut.team_id = $2
    LEFT JOIN teams t ON t.id = $2
    WHERE u.id = $1
"""

# Looks the key up through the unique index on key_hash and bumps last_used in the same
# statement. JSON timestamps have one-second precision, so last_used is written at most once a
# second per key: a hot key's reads then stay read-only transactions (no WAL flush, no row lock
# queue) while last_used remains exact at the precision anyone can observe. One statement, so
# it is atomic on its own (its own implicit transaction) without BEGIN/COMMIT round trips.
_API_KEY_CHECK = """
    WITH k AS (
        SELECT k.id, k.team_id, k.name, k.last_used
        FROM team_api_keys k JOIN teams t ON t.id = k.team_id
        WHERE k.key_hash = $1 AND t.deleted_at IS NULL
    ), touched AS (
        UPDATE team_api_keys SET last_used = $2
        FROM k
        WHERE team_api_keys.id = k.id
          AND (k.last_used IS NULL OR k.last_used <= $2::timestamptz - interval '1 second')
        RETURNING 1
    )
    SELECT id, team_id, name FROM k
"""


async def _authenticate_jwt(
    engine: AsyncEngine, token: str, *, jwt_secret: str, allow_teamless: bool
) -> AuthContext:
    claims = verify_user_jwt(jwt_secret, token)
    async with driver(engine) as conn:
        row = await conn.fetchrow(_JWT_CHECK, claims.user_id, claims.team_id)
    if row is None:
        raise Unauthorized("invalid or expired token")
    email, name, is_admin, role, team_live = row
    if not team_live or role is None:
        if allow_teamless:
            return AuthContext(
                kind="jwt",
                team_id=None,
                user_id=claims.user_id,
                email=email,
                name=name,
                role=None,
                is_admin=bool(is_admin),
            )
        if not team_live:
            raise Unauthorized("team has been deleted; sign in again")
        raise Forbidden("not a member of this team")
    return AuthContext(
        kind="jwt",
        team_id=claims.team_id,
        user_id=claims.user_id,
        email=email,
        name=name,
        role=role,
        is_admin=bool(is_admin),
    )


async def _authenticate_api_key(engine: AsyncEngine, api_key: str) -> AuthContext:
    if not looks_like_api_key(api_key):
        raise Unauthorized("invalid API key")
    async with driver(engine) as conn:
        row = await conn.fetchrow(_API_KEY_CHECK, hash_api_key(api_key), clock.now())
    if row is None:
        raise Unauthorized("invalid API key")
    key_id, team_id, key_name = row
    return AuthContext(kind="api_key", team_id=team_id, api_key_id=key_id, api_key_name=key_name)


async def authenticate(
    engine: AsyncEngine,
    *,
    api_key: str | None,
    bearer: str | None,
    require_user: bool,
    jwt_secret: str,
    allow_teamless: bool = False,
) -> AuthContext:
    """Authenticate a request from its raw credentials (headers, or WebSocket query params).

    ``bearer`` is the JWT itself (without "Bearer "). With ``require_user`` the JWT is what counts
    (an API key sent alongside it is ignored, one sent alone is a 401); otherwise the API key
    wins when both are sent.
    """
    if api_key and not require_user:
        return await _authenticate_api_key(engine, api_key)
    if bearer:
        return await _authenticate_jwt(engine, bearer, jwt_secret=jwt_secret, allow_teamless=allow_teamless)
    if api_key:
        raise Unauthorized(
            "this route requires a user token (Authorization: Bearer); API keys are not accepted"
        )
    if require_user:
        raise Unauthorized("missing authorization header")
    raise Unauthorized("missing API key or authorization header")


def _bearer_token(creds: HTTPAuthorizationCredentials | None, request: Request) -> str | None:
    if creds is not None:
        return creds.credentials
    # HTTPBearer ignores non-Bearer schemes; a present-but-wrong header is still a bad token.
    if request.headers.get("authorization"):
        raise Unauthorized("invalid or expired token")
    return None


BearerCreds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]
ApiKeyHeader = Annotated[str | None, Depends(_api_key_scheme)]


async def current_user(
    request: Request, engine: Db, creds: BearerCreds, api_key: ApiKeyHeader
) -> AuthContext:
    return await authenticate(
        engine,
        api_key=api_key,
        bearer=_bearer_token(creds, request),
        require_user=True,
        jwt_secret=request.app.state.settings.jwt_secret,
    )


async def team_context(
    request: Request, engine: Db, creds: BearerCreds, api_key: ApiKeyHeader
) -> AuthContext:
    return await authenticate(
        engine,
        api_key=api_key,
        bearer=None if api_key else _bearer_token(creds, request),
        require_user=False,
        jwt_secret=request.app.state.settings.jwt_secret,
    )


async def admin_user(ctx: Annotated[AuthContext, Depends(current_user)]) -> AuthContext:
    if not ctx.is_admin:
        raise Forbidden("admin access required")
    return ctx


@dataclass(frozen=True)
class JwtSession:
    """A verified user whose token's team may be gone: ``ctx.team_id`` is None then.
    ``token_team_id`` is the team the JWT names (for SPEC §2.4's path-equals-JWT-team rule)."""

    ctx: AuthContext
    token_team_id: uuid.UUID


async def user_session(request: Request, engine: Db, creds: BearerCreds, api_key: ApiKeyHeader) -> JwtSession:
    bearer = _bearer_token(creds, request)
    secret: str = request.app.state.settings.jwt_secret
    ctx = await authenticate(
        engine, api_key=api_key, bearer=bearer, require_user=True, jwt_secret=secret, allow_teamless=True
    )
    assert bearer is not None  # authenticate() refused the request otherwise
    return JwtSession(ctx=ctx, token_team_id=verify_user_jwt(secret, bearer).team_id)


CurrentUser = Annotated[AuthContext, Depends(current_user)]
TeamContext = Annotated[AuthContext, Depends(team_context)]
AdminUser = Annotated[AuthContext, Depends(admin_user)]
UserSession = Annotated[JwtSession, Depends(user_session)]

# The error statuses every authenticated route can answer, for ``responses=``.
AUTH_ERRORS: tuple[int, ...] = (401, 403)


def client_ip(request: Request) -> str:
    client: Any = request.client
    return client.host if client else ""
