"""Verified emails (docs/auth.md "Verified emails"): a password sign-up is mailed a link, and
opening it (``GET /verify-email?token=`` in the dashboard) proves the holder reads that
address's mail. Accepting a team invitation requires a verified email (team_invitations), so
whoever registers someone else's address first gains nothing.

Other ways in: GitHub sign-in with an address GitHub says is verified (services/oauth.py), and
an operator's ``warren admin user verify EMAIL`` or ``POST /v1/admin/users/verify-email``
(services/users.py). Without ``WARREN_SMTP_URL`` no mail is sent.

A link (security/email_tokens.py) names the user, an expiry and, under its MAC, the address it
went to; it verifies an unverified account once (a used link is refused, as is an expired one
or one for an address the account no longer holds). Mails per user are rate limited, the
sign-up's own included.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlencode

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.config import Settings
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import users
from warren.cp.security import email_tokens
from warren.cp.services import mailer, rate_limits
from warren.cp.services.context import AuthContext
from warren.errors import Conflict, InvalidRequest, ServiceUnavailable, TooManyRequests, Unauthorized

log = logging.getLogger("warren.email_verification")

LINK_PATH = "/verify-email"
MAILS_PER_HOUR = 5
_WINDOW_S = 3600.0


def link(settings: Settings, user_id: uuid.UUID, email: str, *, expires: int | None = None) -> str:
    """The verification link for ``user_id`` at ``email`` (``expires``: Unix seconds)."""
    if expires is None:
        expires = int(clock.time_s()) + settings.email_verification_ttl_s
    token = email_tokens.issue(settings.require_jwt_secret(), user_id, email, expires)
    return f"{settings.public_url.rstrip('/')}{LINK_PATH}?{urlencode({'token': token})}"


async def _send(engine: AsyncEngine, settings: Settings, user_id: uuid.UUID, email: str) -> None:
    key = f"verify-mail:user:{user_id.hex}"
    await rate_limits.count_keyed(engine, key, MAILS_PER_HOUR, _WINDOW_S, "verification emails")
    hours = settings.email_verification_ttl_s // 3600
    body = (
        "Someone (hopefully you) signed up to Warren with this email address.\n\n"
        f"Open this link to verify it (it works once, for {hours or 1} hour(s)):\n\n"
        f"{link(settings, user_id, email)}\n\n"
        "If it was not you, ignore this message: the account cannot join any team without it.\n"
    )
    await mailer.send(settings, email, "Verify your email address for Warren", body)


async def after_signup(engine: AsyncEngine, settings: Settings, user_id: uuid.UUID, email: str) -> None:
    """Mail a new password account its link, when SMTP is configured. Best effort: the account
    exists already, and a failed mail is resent on request."""
    if not mailer.configured(settings):
        return
    try:
        await _send(engine, settings, user_id, email)
    except (mailer.MailError, TooManyRequests) as e:
        log.warning("verification mail to a new account not sent: %s", e)


async def resend(engine: AsyncEngine, settings: Settings, ctx: AuthContext) -> None:
    """``POST /v1/users/me/verify-email``: mail the caller a fresh link."""
    if ctx.user_id is None:
        raise Unauthorized("this route requires a user token")
    if not mailer.configured(settings):
        raise Conflict(
            "this platform sends no email (no WARREN_SMTP_URL): ask an operator to run "
            "'warren admin user verify EMAIL'",
            code="email_not_configured",
        )
    async with autocommit(engine) as conn:
        row = (
            await conn.execute(
                select(users.c.email, users.c.email_verified_at).where(users.c.id == ctx.user_id)
            )
        ).first()
    if row is None:
        raise Unauthorized("invalid or expired token")
    if row.email_verified_at is not None:
        raise Conflict("your email address is verified already", code="already_verified")
    try:
        await _send(engine, settings, ctx.user_id, row.email)
    except mailer.MailError as e:
        log.warning("verification mail not sent: %s", e)
        raise ServiceUnavailable("the verification email could not be sent; try again later") from e


async def verify(engine: AsyncEngine, settings: Settings, token: str) -> str:
    """Mark the link's account verified; returns its email. InvalidRequest ``invalid_token``,
    ``token_expired`` or ``token_used`` otherwise (in that order: nothing about an account is
    told to a link that is not its own)."""
    user_id, expires, mac = email_tokens.parse(token)
    async with autocommit(engine) as conn:
        row = (
            await conn.execute(select(users.c.email, users.c.email_verified_at).where(users.c.id == user_id))
        ).first()
        if row is None or not email_tokens.matches(
            settings.require_jwt_secret(), user_id, expires, row.email, mac
        ):
            raise InvalidRequest("invalid verification link", code="invalid_token")
        if expires <= clock.time_s():
            raise InvalidRequest("this verification link expired: ask for a new one", code="token_expired")
        done = (
            await conn.execute(
                update(users)
                .where(users.c.id == user_id, users.c.email_verified_at.is_(None))
                .values(email_verified_at=clock.now())
                .returning(users.c.id)
            )
        ).first()
    if done is None:
        raise InvalidRequest("this verification link was used already", code="token_used")
    email: str = row.email
    return email
