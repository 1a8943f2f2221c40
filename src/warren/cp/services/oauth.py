"""GitHub OAuth sign-in (docs/spec.md §2.1, docs/design.md §4: served at ``/v1/auth/oauth/{provider}``).

The flow keeps no server state: the ``state`` nonce travels to GitHub and back, and a cookie
holds ``nonce:HMAC-SHA256(jwt_secret, nonce)`` so the callback can check that the browser that
finishes the flow is the one that started it. The callback always answers with a redirect to
the dashboard's ``/auth/github/callback`` page: ``?error=<code>`` on failure, otherwise five
short-lived cookies (``warren_oauth_token|user_id|team_id|email|name``, Path=/auth/, Max-Age 60,
readable by the page's JavaScript, values percent-encoded) carry the login to the page, and an
HttpOnly ``__Host-warren_signin_bind`` (plain ``warren_signin_bind`` over HTTP) binds them to this
browser: the landing refuses a token without it (see ``landing_bound``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import oauth_providers, users
from warren.cp.security.tokens import constant_time_equals
from warren.cp.services import emails
from warren.cp.services.auth import AuthResult, token_result
from warren.cp.services.teams import email_registered, insert_account, login_team
from warren.errors import InvalidRequest, NotFound

log = logging.getLogger("warren.oauth")

PROVIDERS = ("github",)
STATE_COOKIE = "warren_oauth_state"
STATE_MAX_AGE = 600
RESULT_COOKIE_PREFIX = "warren_oauth_"
RESULT_COOKIE_PATH = "/auth/"
RESULT_MAX_AGE = 60
_HTTP_TIMEOUT = httpx.Timeout(10.0)


@dataclass(frozen=True)
class Cookie:
    name: str
    value: str
    path: str
    max_age: int
    httponly: bool
    secure: bool
    samesite: str = "lax"


@dataclass
class OAuthRedirect:
    location: str
    cookies: list[Cookie] = field(default_factory=list)
    # Cookies to expire (name, path).
    expire: list[tuple[str, str]] = field(default_factory=list)


class _Fail(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise NotFound(f"unknown OAuth provider: {provider}", code="provider_not_found")


def _mac(secret: str, nonce: str) -> str:
    return hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def callback_url(settings: Settings, provider: str) -> str:
    return f"{settings.public_url.rstrip('/')}/v1/auth/oauth/{provider}/callback"


def begin(settings: Settings, provider: str, *, secure: bool) -> OAuthRedirect:
    """The redirect to the provider plus the signed state cookie."""
    _check_provider(provider)
    if not settings.github_client_id:
        raise NotFound("GitHub sign-in is not configured", code="provider_not_found")
    nonce = secrets.token_hex(16)
    query = urlencode(
        {
            "client_id": settings.github_client_id,
            "redirect_uri": callback_url(settings, provider),
            "scope": "user:email",
            "state": nonce,
        }
    )
    cookie = Cookie(
        name=STATE_COOKIE,
        value=f"{nonce}:{_mac(settings.require_jwt_secret(), nonce)}",
        path="/",
        max_age=STATE_MAX_AGE,
        httponly=True,
        secure=secure,
    )
    return OAuthRedirect(location=f"{settings.github_authorize_url}?{query}", cookies=[cookie])


def _dashboard_target(settings: Settings, provider: str) -> str:
    base = (settings.oauth_redirect_url or settings.public_url).rstrip("/")
    return f"{base}/auth/{provider}/callback"


def _state_ok(secret: str, cookie: str | None, state: str | None) -> bool:
    if not cookie or not state or cookie.count(":") != 1:
        return False
    nonce, mac = cookie.split(":")
    if not nonce or not mac:
        return False
    # Both comparisons in constant time: the MAC is a secret derivative, the nonce a capability.
    mac_ok = constant_time_equals(mac, _mac(secret, nonce))
    state_ok = constant_time_equals(nonce, state)
    return mac_ok and state_ok


@dataclass(frozen=True)
class _Identity:
    provider_id: str
    email: str
    name: str
    verified: bool = False


async def _github_identity(settings: Settings, code: str) -> _Identity:
    try:
        async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT) as client:
            tok = await client.post(
                settings.github_token_url,
                data={
                    "client_id": settings.github_client_id,
                    "client_secret": settings.github_client_secret,
                    "code": code,
                    "redirect_uri": callback_url(settings, "github"),
                },
                headers={"Accept": "application/json"},
            )
            access_token = tok.json().get("access_token") if tok.status_code == 200 else None
            if not isinstance(access_token, str) or not access_token:
                raise _Fail("exchange_failed")
            headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"}
            api = settings.github_api_url.rstrip("/")
            user_resp = await client.get(f"{api}/user", headers=headers)
            if user_resp.status_code != 200:
                raise _Fail("exchange_failed")
            user: dict[str, Any] = user_resp.json()
            listed = await _github_emails(client, f"{api}/user/emails", headers)
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        log.warning("github exchange failed: %s", e)
        raise _Fail("exchange_failed") from e
    provider_id = user.get("id")
    email = user.get("email") or next((e for e, ok, primary in listed if primary and ok), "")
    if provider_id is None or not isinstance(email, str) or "@" not in email:
        raise _Fail("exchange_failed")
    # Verified only as GitHub's emails API says it (the profile's public email carries no flag).
    verified = any(ok and e.strip().lower() == email.strip().lower() for e, ok, _ in listed)
    try:
        clean = emails.normalize_email(email)
    except InvalidRequest as e:
        raise _Fail("invalid_email") from e
    name = str(user.get("name") or user.get("login") or "").strip()[:100] or clean.split("@")[0]
    return _Identity(provider_id=str(provider_id), email=clean, name=name, verified=verified)


async def _github_emails(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> list[tuple[str, bool, bool]]:
    """(email, verified, primary) of each address GitHub lists; [] if it lists none."""
    resp = await client.get(url, headers=headers)
    body = resp.json() if resp.status_code == 200 else []
    return [
        (str(e.get("email") or ""), e.get("verified") is True, e.get("primary") is True)
        for e in (body if isinstance(body, list) else [])
        if isinstance(e, dict)
    ]


async def _login_existing(engine: AsyncEngine, secret: str, user_id: uuid.UUID) -> AuthResult:
    async with autocommit(engine) as conn:
        user = (
            await conn.execute(
                select(users.c.email, users.c.name, users.c.is_admin).where(users.c.id == user_id)
            )
        ).first()
        found = await login_team(conn, user_id)
    if user is None:
        raise _Fail("db_error")
    # No live team: a teamless token, as password login issues (docs/spec.md §2.1).
    team_id, role = found if found is not None else (None, None)
    return token_result(
        secret,
        user_id=user_id,
        team_id=team_id,
        role=role,
        email=user.email,
        name=user.name,
        is_admin=bool(user.is_admin),
    )


def _cookie_values(result: AuthResult) -> dict[str, str]:
    """The result cookies' values; ``team_id`` is "" for a teamless token."""
    return {
        "token": result.token,
        "user_id": result.user_id,
        "team_id": result.team_id or "",
        "email": result.email,
        "name": result.name,
    }


async def _mark_verified(engine: AsyncEngine, user_id: uuid.UUID, email: str) -> None:
    """The provider vouches for ``email`` now: verify the account if it still holds that address."""
    async with autocommit(engine) as conn:
        await conn.execute(
            users.update()
            .where(users.c.id == user_id, users.c.email == email, users.c.email_verified_at.is_(None))
            .values(email_verified_at=clock.now())
        )


async def _find_identity(engine: AsyncEngine, provider: str, provider_id: str) -> uuid.UUID | None:
    async with autocommit(engine) as conn:
        uid = (
            await conn.execute(
                select(oauth_providers.c.user_id).where(
                    oauth_providers.c.provider == provider, oauth_providers.c.provider_id == provider_id
                )
            )
        ).scalar()
    return uid


async def _sign_in(engine: AsyncEngine, secret: str, provider: str, ident: _Identity) -> AuthResult:
    existing = await _find_identity(engine, provider, ident.provider_id)
    if existing is not None:
        if ident.verified:
            await _mark_verified(engine, existing, ident.email)
        return await _login_existing(engine, secret, existing)
    if await email_registered(engine, ident.email):
        # Accounts are never linked automatically: whoever controls the GitHub account may not
        # be the owner of the existing Warren account.
        raise _Fail("email_taken")
    user_id = ids.new_uuid()
    now = clock.now()
    try:
        async with transaction(engine) as conn:
            team = await insert_account(
                conn, user_id=user_id, email=ident.email, name=ident.name, password_hash=None, now=now
            )
            await conn.execute(
                oauth_providers.insert().values(
                    provider=provider,
                    provider_id=ident.provider_id,
                    user_id=user_id,
                    email=ident.email,
                    created_at=now,
                )
            )
            if ident.verified:
                await conn.execute(users.update().where(users.c.id == user_id).values(email_verified_at=now))
    except IntegrityError:
        # A concurrent callback for the same identity won the race: log in as that user.
        existing = await _find_identity(engine, provider, ident.provider_id)
        if existing is not None:
            return await _login_existing(engine, secret, existing)
        raise _Fail("email_taken") from None
    team_id = ids.parse_id(ids.Kind.TEAM, team.id)
    return token_result(
        secret,
        user_id=user_id,
        team_id=team_id,
        role="owner",
        email=ident.email,
        name=ident.name,
        is_admin=False,
    )


async def complete(
    engine: AsyncEngine,
    settings: Settings,
    provider: str,
    *,
    code: str | None,
    state: str | None,
    error: str | None,
    state_cookie: str | None,
    secure: bool,
) -> OAuthRedirect:
    """Finish the flow. Always a redirect to the dashboard; the state cookie is always expired."""
    _check_provider(provider)
    target = _dashboard_target(settings, provider)
    expire = [(STATE_COOKIE, "/")]
    secret = settings.require_jwt_secret()
    try:
        if error:
            raise _Fail("access_denied")
        if not _state_ok(secret, state_cookie, state):
            raise _Fail("invalid_state")
        if not code:
            raise _Fail("missing_code")
        ident = await _github_identity(settings, code)
        try:
            result = await _sign_in(engine, secret, provider, ident)
        except SQLAlchemyError as e:
            log.exception("oauth sign-in database error")
            raise _Fail("db_error") from e
    except _Fail as f:
        return OAuthRedirect(location=f"{target}?{urlencode({'error': f.code})}", expire=expire)
    except Exception:
        log.exception("oauth callback failed")
        return OAuthRedirect(location=f"{target}?{urlencode({'error': 'internal_error'})}", expire=expire)
    cookies = [
        Cookie(
            name=RESULT_COOKIE_PREFIX + key,
            value=quote(value, safe=""),
            path=RESULT_COOKIE_PATH,
            max_age=RESULT_MAX_AGE,
            httponly=False,
            secure=secure,
        )
        for key, value in _cookie_values(result).items()
    ]
    cookies.append(
        Cookie(
            name=bind_cookie_name(secure),
            value=landing_cookie_value(secret, result.token),
            path="/",
            max_age=RESULT_MAX_AGE,
            httponly=True,
            secure=secure,
        )
    )
    return OAuthRedirect(location=target, cookies=cookies, expire=expire)


# The landing's binding (session 14): a script on a sibling subdomain can set a ``Path=/auth/``
# ``warren_oauth_token`` cookie for the CP's host and send the victim to the landing, which
# signed them in as the attacker. The landing now also needs this cookie, whose value is a MAC
# of the very token the callback issued, HttpOnly and, over HTTPS, ``__Host-``-prefixed: only
# the CP's own host can set it (no Domain, Path=/, Secure), so a sibling cannot plant it, and a
# planted token has no MAC. Over plain HTTP a cookie cannot be ``__Host-``; a sibling host on
# plain HTTP can plant any cookie, which is why production runs HTTPS (docs/auth.md).
BIND_COOKIE = "warren_signin_bind"


def bind_cookie_name(secure: bool) -> str:
    return f"__Host-{BIND_COOKIE}" if secure else BIND_COOKIE


def landing_cookie_value(secret: str, token: str) -> str:
    """The binding cookie's value for ``token``: a MAC only the CP can compute."""
    return _mac(secret, "oauth-landing:" + hashlib.sha256(token.encode()).hexdigest())


def landing_bound(secret: str, token: str, bind: str | None) -> bool:
    """Whether this browser's binding cookie names ``token``: the flow it finished issued it."""
    return bool(bind) and constant_time_equals(bind or "", landing_cookie_value(secret, token))
