"""Signup, login and switch-team (docs/spec.md §2.1, §7.6, §7.7, docs/design.md §4).

Passwords are hashed with argon2id in a worker thread (``security.passwords``); every JWT
claim is read from the database when the token is issued.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import teams, users, users_teams
from warren.cp.security import passwords
from warren.cp.security.tokens import issue_user_jwt
from warren.cp.services import audit, email_verification, emails, rate_limits, team_invitations
from warren.cp.services.context import AuthContext
from warren.cp.services.teams import TeamWithRole, email_registered, insert_account, login_team
from warren.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized

MIN_PASSWORD = 8
# Far above any real password; stops megabyte "passwords" from reaching the hasher.
MAX_PASSWORD = 1024
MAX_EMAIL = emails.MAX_EMAIL
MAX_NAME = 100


class AuthResult(BaseModel):
    token: str
    user_id: str
    # None: the user has no live team, and the token is teamless (docs/spec.md §2.1): it may list
    # and answer invitations, create a team and read the profile, nothing team-scoped.
    team_id: str | None
    email: str
    name: str


def normalize_email(email: str) -> str:
    """How login looks an address up: trimmed and lowercased, nothing refused (an account from
    before the email rule keeps signing in). New addresses go through ``emails.normalize_email``."""
    return email.strip().lower()


def token_result(
    secret: str,
    *,
    user_id: uuid.UUID,
    team_id: uuid.UUID | None,
    role: str | None,
    email: str,
    name: str,
    is_admin: bool,
) -> AuthResult:
    """A JWT for ``team_id``, or a teamless one when it is None (password and OAuth sign-ins)."""
    token = issue_user_jwt(
        secret, user_id=user_id, team_id=team_id, role=role, email=email, name=name, is_admin=is_admin
    )
    team = ids.team_id(team_id) if team_id is not None else None
    return AuthResult(token=token, user_id=ids.user_id(user_id), team_id=team, email=email, name=name)


async def signup(
    engine: AsyncEngine,
    jwt_secret: str,
    *,
    email: str,
    password: str,
    name: str,
    attempt: rate_limits.Attempt | None = None,
    settings: Settings | None = None,
) -> AuthResult:
    """``attempt``: the HTTP client's address and limits (every HTTP route passes it; in-process
    callers such as the CLI and test fixtures are not rate limited). ``settings``: mail the new
    account its verification link when they configure SMTP (the HTTP routes pass them)."""
    email = emails.normalize_email(email)
    name = name.strip()
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD} characters")
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidRequest(f"name must be 1-{MAX_NAME} characters")
    if "\x00" in name or "\x00" in email:
        raise InvalidRequest("invalid characters in name or email")
    if attempt is not None:
        # Before the existence check: probing which emails are registered is counted too.
        await rate_limits.count_signup(engine, attempt)

    if await email_registered(engine, email):
        raise Conflict("an account with this email already exists", code="email_taken")

    password_hash = await passwords.hash_password(password)
    user_uuid = ids.new_uuid()
    now = clock.now()
    try:
        async with transaction(engine) as conn:
            team = await insert_account(
                conn, user_id=user_uuid, email=email, name=name, password_hash=password_hash, now=now
            )
            team_uuid = ids.parse_id(ids.Kind.TEAM, team.id)
            who = AuthContext(
                kind="jwt", team_id=team_uuid, user_id=user_uuid, email=email, name=name, role="owner"
            )
            await audit.record(
                conn, who, team_id=team_uuid, action="signup", resource_type="user",
                resource_id=ids.user_id(user_uuid),
            )  # fmt: skip
    except IntegrityError as e:
        raise Conflict("an account with this email already exists", code="email_taken") from e
    if settings is not None:
        await email_verification.after_signup(engine, settings, user_uuid, email)
    return token_result(
        jwt_secret, user_id=user_uuid, team_id=team_uuid, role="owner", email=email, name=name, is_admin=False
    )


async def login(
    engine: AsyncEngine,
    jwt_secret: str,
    *,
    email: str,
    password: str,
    attempt: rate_limits.Attempt | None = None,
) -> AuthResult:
    """``attempt`` as for :func:`signup`. The attempt is counted before the password is checked,
    successful or not (see ``rate_limits``)."""
    email = normalize_email(email)
    if not email or not password:
        raise InvalidRequest("email and password are required")
    if attempt is not None:
        await rate_limits.count_login(engine, attempt, email[:MAX_EMAIL])
    failure = Unauthorized("invalid email or password")
    if len(email) > MAX_EMAIL or len(password) > MAX_PASSWORD:
        raise failure
    async with autocommit(engine) as conn:
        user = (
            await conn.execute(
                select(users.c.id, users.c.password_hash, users.c.name, users.c.is_admin).where(
                    users.c.email == email
                )
            )
        ).first()
    # Unknown users are "verified" against a dummy hash so their timing matches a wrong password.
    ok = await passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        raise failure
    async with autocommit(engine) as conn:
        found = await login_team(conn, user.id)
    # No live team: a teamless token, so the user can still answer an invitation or make a team.
    team_uuid, role = found if found is not None else (None, None)
    return token_result(
        jwt_secret,
        user_id=user.id,
        team_id=team_uuid,
        role=role,
        email=email,
        name=user.name,
        is_admin=bool(user.is_admin),
    )


async def switch_team(engine: AsyncEngine, jwt_secret: str, ctx: AuthContext, team_id: str) -> AuthResult:
    """A fresh JWT for another team (from a teamless token too: accepting an invitation or
    creating a team switches to it). Role, name and is_admin are re-read from the DB."""
    if ctx.user_id is None:
        raise Unauthorized("this route requires a user token")
    if not team_id:
        raise InvalidRequest("team_id is required")
    try:
        team_uuid = ids.parse_id(ids.Kind.TEAM, team_id)
    except InvalidRequest as e:
        raise InvalidRequest("invalid team_id") from e
    async with autocommit(engine) as conn:
        team = (await conn.execute(select(teams.c.deleted_at).where(teams.c.id == team_uuid))).first()
        if team is None or team.deleted_at is not None:
            raise NotFound("team not found")
        row = (
            await conn.execute(
                select(users.c.name, users.c.email, users.c.is_admin, users_teams.c.role)
                .select_from(
                    users.outerjoin(
                        users_teams,
                        (users_teams.c.user_id == users.c.id) & (users_teams.c.team_id == team_uuid),
                    )
                )
                .where(users.c.id == ctx.user_id)
            )
        ).first()
    if row is None:
        raise Unauthorized("invalid or expired token")
    if row.role is None:
        raise Forbidden("not a member of this team")
    return token_result(
        jwt_secret,
        user_id=ctx.user_id,
        team_id=team_uuid,
        role=row.role,
        email=row.email,
        name=row.name,
        is_admin=bool(row.is_admin),
    )


class JoinedTeam(TeamWithRole):
    """The team an accepted invitation joined, and a fresh JWT for it."""

    token: str


async def accept_invitation(
    engine: AsyncEngine, jwt_secret: str, ctx: AuthContext, invitation_id: uuid.UUID
) -> JoinedTeam:
    """Join with the invitation, then switch to the team joined (as the dashboard does): a
    teamless user's one way into a team hands them a token that can act in it."""
    team = await team_invitations.accept(engine, ctx, invitation_id)
    switched = await switch_team(engine, jwt_secret, ctx, team.id)
    return JoinedTeam(**team.model_dump(), token=switched.token)
