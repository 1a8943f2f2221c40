"""The caller's own profile and user search (docs/spec.md §2.1, §2.3, §7.10)."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import users
from warren.cp.services.context import AuthContext
from warren.errors import InvalidRequest, Unauthorized

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
    user_id: str
    email: str


def escape_like(value: str) -> str:
    """Make ``%``, ``_`` and the escape character itself literal in a LIKE pattern."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_by_email_prefix(engine: AsyncEngine, ctx: AuthContext, prefix: str) -> list[UserMatch]:
    """Up to 10 users whose email starts with ``prefix`` (not restricted to a team), by email."""
    del ctx  # any signed-in user may search; the parameter keeps the service signature uniform
    p = prefix.strip().lower()
    if len(p) < 3 or "@" not in p:
        raise InvalidRequest("email prefix must be at least 3 characters and contain '@'")
    if len(p) > MAX_PREFIX or "\x00" in p:
        raise InvalidRequest("invalid email prefix")
    async with autocommit(engine) as conn:
        rows = await conn.execute(
            select(users.c.id, users.c.email)
            .where(users.c.email.like(escape_like(p) + "%", escape="\\"))
            .order_by(users.c.email)
            .limit(SEARCH_LIMIT)
        )
        return [UserMatch(user_id=ids.user_id(r.id), email=r.email) for r in rows]
