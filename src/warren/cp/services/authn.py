"""Request authentication (docs/spec.md §2.0, docs/design.md §4): the one check behind the REST API, the exec
WebSocket and the dashboard. Each door reads its credentials (``warren.cp.security.credentials``)
and hands them to its app's :class:`Gate`: :func:`authenticate`, then the team's request rate
(:func:`throttle`), so no door can take one without the other.

A JWT's team and role are hints. Every authenticated request re-reads, in ONE query, the user,
their membership in the token's team (and its role), the team's ``deleted_at`` and the user's
``is_admin``. So a removed member or a soft-deleted team loses access on the very next request.

Outcomes for a JWT whose signature and expiry are fine:
- user row gone → 401 "invalid or expired token";
- token's team soft-deleted (or gone) → 401 "team has been deleted; sign in again" — the
  credential is bound to a team that no longer exists, so it is refused like a bad token;
- user no longer a member of the token's team → 403 "not a member of this team";
- with ``allow_teamless`` (the routes a user needs to find or make a team, and the dashboard)
  the last two proceed with ``ctx.team_id = None`` instead. See docs/auth.md.

A *teamless* JWT (no team: what sign-in issues to a user with no live team, docs/spec.md §2.1)
proceeds only with ``allow_teamless``; every other route answers 403 ``no_team`` with what to do
(:func:`teamless`). Its ``team_id`` is None, so the one query finds no membership to use.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.db.engine import driver
from warren.cp.db.queries import auth as q
from warren.cp.security.api_keys import hash_api_key, looks_like_api_key
from warren.cp.security.credentials import Credentials
from warren.cp.security.tokens import UserClaims, verify_user_jwt
from warren.cp.services.context import AuthContext
from warren.cp.services.rate_limits import TeamRateLimiter
from warren.errors import Forbidden, Unauthorized
from warren.request_context import remember_actor

TEAMLESS_MESSAGE = "you are not in a team yet: accept an invitation or create a team"


def teamless() -> Forbidden:
    """403 ``no_team`` for a teamless token on a team-scoped route, saying what to do."""
    return Forbidden(TEAMLESS_MESSAGE, code="no_team")


async def _authenticate_jwt(engine: AsyncEngine, claims: UserClaims, *, allow_teamless: bool) -> AuthContext:
    if claims.team_id is None and not allow_teamless:
        # Before the query: a teamless token reaches nothing team-scoped, whatever the database
        # says (a deleted user's token is refused by the routes it may reach, below).
        raise teamless()
    async with driver(engine) as conn:
        row = await conn.fetchrow(q.JWT_CHECK, claims.user_id, claims.team_id)
    if row is None:
        raise Unauthorized("invalid or expired token")
    email, name, is_admin, role, team_live, owner_id = row
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
        owner_id=owner_id,
    )


async def _authenticate_api_key(engine: AsyncEngine, api_key: str) -> AuthContext:
    if not looks_like_api_key(api_key):
        raise Unauthorized("invalid API key")
    async with driver(engine) as conn:
        row = await conn.fetchrow(q.API_KEY_CHECK, hash_api_key(api_key), clock.now())
    if row is None:
        raise Unauthorized("invalid API key")
    key_id, team_id, key_name, owner_id = row
    return AuthContext(
        kind="api_key", team_id=team_id, api_key_id=key_id, api_key_name=key_name, owner_id=owner_id
    )


async def team_owner(engine: AsyncEngine, team_id: uuid.UUID) -> uuid.UUID | None:
    """The account that owns ``team_id`` (for a context built from a credential that names the
    team but no user: signed URLs, envd access tokens)."""
    async with driver(engine) as conn:
        owner: uuid.UUID | None = await conn.fetchval(q.TEAM_OWNER, team_id)
    return owner


def _user_token(creds: Credentials, *, require_user: bool) -> str:
    """The bearer JWT to check, or the 401 that its absence is."""
    bearer = creds.user_token()
    if bearer:
        return bearer
    if creds.api_key:  # reached only with require_user: otherwise the API key was checked
        raise Unauthorized(
            "this route requires a user token (Authorization: Bearer); API keys are not accepted"
        )
    if require_user:
        raise Unauthorized("missing authorization header")
    raise Unauthorized("missing API key or authorization header")


async def authenticate(
    engine: AsyncEngine,
    creds: Credentials,
    *,
    require_user: bool,
    jwt_secret: str,
    allow_teamless: bool = False,
) -> AuthContext:
    """Who ``creds`` belong to, checked against the database.

    With ``require_user`` the JWT is what counts (an API key sent alongside it is ignored, one
    sent alone is a 401); otherwise the API key wins when both are sent.
    """
    if creds.api_key and not require_user:
        ctx = await _authenticate_api_key(engine, creds.api_key)
    else:
        claims = verify_user_jwt(jwt_secret, _user_token(creds, require_user=require_user))
        ctx = await _authenticate_jwt(engine, claims, allow_teamless=allow_teamless)
    remember_actor(ctx)  # for the audit record of a call that then fails (services/audit.py)
    return ctx


async def authenticate_session(
    engine: AsyncEngine, creds: Credentials, *, jwt_secret: str
) -> tuple[AuthContext, uuid.UUID | None]:
    """``authenticate(require_user=True, allow_teamless=True)`` and the team the JWT names, which
    ``ctx.team_id`` is not when that team is gone or the user left it (None for a teamless
    token). One verification of the token serves both (it costs more than the rest of a cached
    read's authentication)."""
    claims = verify_user_jwt(jwt_secret, _user_token(creds, require_user=True))
    ctx = await _authenticate_jwt(engine, claims, allow_teamless=True)
    remember_actor(ctx)
    return ctx, claims.team_id


def throttle(limiter: TeamRateLimiter, ctx: AuthContext) -> AuthContext:
    """The per-team request rate limit (429 with Retry-After), after authentication: a team's
    API keys and its members' tokens share one bucket; a user without a team has their own."""
    key = ctx.team_id or ctx.user_id
    if key is not None:
        limiter.check(key)
    return ctx


@dataclass(frozen=True)
class Gate:
    """The door of every entry that takes a team's credentials: the REST dependencies, the
    WebSocket routes, E2B's control API and the dashboard. It authenticates, then takes one token
    from the team's request rate. Built once per app, with its engine (cp/app.py's lifespan)."""

    engine: AsyncEngine
    jwt_secret: str
    limiter: TeamRateLimiter

    async def admit(
        self, creds: Credentials, *, require_user: bool, allow_teamless: bool = False
    ) -> AuthContext:
        """:func:`authenticate`, then :func:`throttle` (TooManyRequests past the team's rate)."""
        ctx = await authenticate(
            self.engine,
            creds,
            require_user=require_user,
            jwt_secret=self.jwt_secret,
            allow_teamless=allow_teamless,
        )
        return throttle(self.limiter, ctx)

    async def admit_session(self, creds: Credentials) -> tuple[AuthContext, uuid.UUID | None]:
        """:func:`authenticate_session`, then :func:`throttle`."""
        ctx, token_team_id = await authenticate_session(self.engine, creds, jwt_secret=self.jwt_secret)
        return throttle(self.limiter, ctx), token_team_id
