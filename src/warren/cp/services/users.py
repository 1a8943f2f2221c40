"""User search (SPEC §2.3, §7.10) and platform-admin grants."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import users
from warren.cp.services import autocommit
from warren.cp.services.context import AuthContext
from warren.errors import InvalidRequest, NotFound

SEARCH_LIMIT = 10
MAX_PREFIX = 254


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
    async with autocommit(engine).connect() as conn:
        rows = await conn.execute(
            select(users.c.id, users.c.email)
            .where(users.c.email.like(escape_like(p) + "%", escape="\\"))
            .order_by(users.c.email)
            .limit(SEARCH_LIMIT)
        )
        return [UserMatch(user_id=ids.user_id(r.id), email=r.email) for r in rows]


async def set_platform_admin(engine: AsyncEngine, email: str, is_admin: bool = True) -> str:
    """Grant or revoke platform admin (``warren admin grant EMAIL``). Returns the user's ID."""
    clean = email.strip().lower()
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(users)
                .where(users.c.email == clean)
                .values(is_admin=is_admin, updated_at=clock.now())
                .returning(users.c.id)
            )
        ).first()
    if row is None:
        raise NotFound(f"no user with email {clean}")
    return ids.user_id(row.id)
