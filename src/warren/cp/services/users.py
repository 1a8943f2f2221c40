"""The caller's own profile, user search and email verification state.

See docs/spec.md §2.1, §2.3, §7.10 and docs/auth.md "Email addresses"."""

from __future__ import annotations

import unicodedata
import uuid

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import users
from warren.cp.services.context import AuthContext
from warren.errors import Forbidden, InvalidRequest, NotFound, Unauthorized

SEARCH_LIMIT = 10
MAX_PREFIX = 254


class Profile(BaseModel):
    user_id: str
    email: str
    name: str
    is_admin: bool
    # The team the caller's token acts for and their role in it; both None for a teamless
    # token, or one whose team is gone or was left (the user then joins or makes one).
    team_id: str | None
    role: str | None


def profile(ctx: AuthContext) -> Profile:
    """Who the caller is, as ``authenticate`` just read it from the database."""
    if ctx.user_id is None:
        raise Unauthorized("this route requires a user token")
    return Profile(
        user_id=ids.user_id(ctx.user_id), email=ctx.email, name=ctx.name, is_admin=ctx.is_admin,
        team_id=ids.team_id(ctx.team_id) if ctx.team_id is not None else None, role=ctx.role,
    )  # fmt: skip


class UserMatch(BaseModel):
    # The id beside the email: two accounts made before session 14's email rule may still look
    # alike; the id and ``verified`` tell them apart in an invite picker.
    user_id: str
    email: str
    verified: bool


def escape_like(value: str) -> str:
    """Make ``%``, ``_`` and the escape character itself literal in a LIKE pattern."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_by_email_prefix(engine: AsyncEngine, ctx: AuthContext, prefix: str) -> list[UserMatch]:
    """Up to 10 users whose email starts with ``prefix`` (not restricted to a team), by email."""
    del ctx  # any signed-in user may search; the parameter keeps the service signature uniform
    p = unicodedata.normalize("NFC", prefix.strip()).lower()
    if len(p) < 3 or "@" not in p:
        raise InvalidRequest("email prefix must be at least 3 characters and contain '@'")
    if len(p) > MAX_PREFIX or "\x00" in p:
        raise InvalidRequest("invalid email prefix")
    async with autocommit(engine) as conn:
        rows = await conn.execute(
            select(users.c.id, users.c.email, users.c.email_verified_at)
            .where(users.c.email.like(escape_like(p) + "%", escape="\\"))
            .order_by(users.c.email)
            .limit(SEARCH_LIMIT)
        )
        return [
            UserMatch(user_id=ids.user_id(r.id), email=r.email, verified=r.email_verified_at is not None)
            for r in rows
        ]


async def mark_verified(engine: AsyncEngine, email: str) -> bool:
    """Mark the account holding ``email`` verified (the operator's ``warren admin user verify``
    and the admin API; a verification link and OAuth do it too). False if there is no such
    account. The stored email is matched as typed (lowercased): an account from before the
    email rule may hold an address the rule now refuses, and an operator may still verify it."""
    async with autocommit(engine) as conn:
        row = (
            await conn.execute(
                update(users)
                .where(users.c.email == email.strip().lower())
                .values(email_verified_at=func.coalesce(users.c.email_verified_at, func.now()))
                .returning(users.c.id)
            )
        ).first()
    return row is not None


async def admin_verify(engine: AsyncEngine, ctx: AuthContext, email: str) -> None:
    """``POST /v1/admin/users/verify-email``: a platform admin vouches for an address."""
    if not ctx.is_admin:
        raise Forbidden("platform admin required")
    if not await mark_verified(engine, email):
        raise NotFound("user not found: no account with that email")


async def require_verified(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    """403 ``email_unverified`` unless the user proved they own their email address."""
    verified = (await conn.execute(select(users.c.email_verified_at).where(users.c.id == user_id))).scalar()
    if verified is None:
        raise Forbidden(
            "verify your email address first: open the link in the verification email (resend it "
            "with POST /v1/users/me/verify-email or from the dashboard), or ask a platform operator "
            "to run 'warren admin user verify EMAIL'",
            code="email_unverified",
        )
