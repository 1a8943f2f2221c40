"""The dashboard's browser session: one signed, HttpOnly cookie and nothing kept on the server.

The cookie ``warren_session`` holds a compact HS256 token signed with a key derived from the
JWT secret (HMAC-SHA256 of the secret and a fixed label, so a session token is never accepted
where a JWT is expected and vice versa). Its claims:

* ``typ`` = ``dashboard_session``;
* ``csrf``: this session's synchronizer token (see ``csrf.py``);
* ``jwt``: for a signed-in user, the very same user JWT the REST API accepts, as issued by the
  accounts services at login, signup, OAuth or switch-team. It is never readable by page scripts
  (the cookie is HttpOnly) and is re-checked against the database on every request by the REST
  API's own ``authenticate`` (``api/deps.py``): a removed member or a deleted team loses access on
  the next page load;
* ``iat``/``exp``: an anonymous session lives a day; a signed-in one as long as its JWT.

A visitor without a session gets an anonymous one (CSRF token only), so the login and signup
forms are CSRF-protected too. Every login replaces the whole session: a fresh CSRF token, the
team chosen by ``loginTeam`` and nothing carried over from an earlier session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from warren import clock
from warren.cp.security.tokens import UserClaims, verify_user_jwt
from warren.errors import Unauthorized

COOKIE_NAME = "warren_session"
ANONYMOUS_TTL = timedelta(days=1)
_TYP = "dashboard_session"
_ALG = "HS256"
_KEY_LABEL = b"warren dashboard session v1"


@dataclass(frozen=True)
class Session:
    """What the cookie holds. ``token`` is re-verified (signature, expiry, DB) on every use."""

    csrf: str
    token: str | None = None
    expires_at: int = 0

    @property
    def signed_in(self) -> bool:
        return self.token is not None

    def claims(self, jwt_secret: str) -> UserClaims | None:
        """The user JWT's claims, or None when there is none or it has expired."""
        if self.token is None:
            return None
        try:
            return verify_user_jwt(jwt_secret, self.token)
        except Unauthorized:
            return None


def session_key(jwt_secret: str) -> bytes:
    """The session signing key: derived from the JWT secret, distinct from the JWT key itself."""
    return hmac.new(jwt_secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def anonymous() -> Session:
    return Session(csrf=new_csrf_token())


def for_login(token: str) -> Session:
    """A brand-new session for a user who just signed in: new CSRF token, no earlier state."""
    return Session(csrf=new_csrf_token(), token=token)


def with_token(session: Session, token: str) -> Session:
    """The same browser session (same CSRF token) acting with a new JWT, e.g. after switch-team."""
    return Session(csrf=session.csrf, token=token)


def encode(jwt_secret: str, session: Session) -> tuple[str, int]:
    """Sign ``session``; returns the token and the cookie's max-age in seconds."""
    now = int(clock.time_s())
    exp = now + int(ANONYMOUS_TTL.total_seconds())
    claims: dict[str, Any] = {"typ": _TYP, "csrf": session.csrf, "iat": now}
    if session.token is not None:
        claims["jwt"] = session.token
        user = session.claims(jwt_secret)
        if user is not None:
            exp = user.expires_at
    claims["exp"] = exp
    return jwt.encode(claims, session_key(jwt_secret), algorithm=_ALG), max(exp - now, 0)


def decode(jwt_secret: str, token: str) -> Session | None:
    """The session in ``token``, or None when it is forged, malformed or expired."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            session_key(jwt_secret),
            algorithms=[_ALG],
            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "csrf"]},
        )
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    csrf = claims.get("csrf")
    user_jwt = claims.get("jwt")
    if claims.get("typ") != _TYP or not isinstance(csrf, str) or len(csrf) < 32:
        return None
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= clock.time_s():
        return None
    if user_jwt is not None and not isinstance(user_jwt, str):
        return None
    return Session(csrf=csrf, token=user_jwt, expires_at=exp)


def is_https(request: HTTPConnection) -> bool:
    """TLS at the CP itself, or at a proxy that says so with ``X-Forwarded-Proto: https``."""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme in ("https", "wss") or proto == "https"


def read(request: HTTPConnection, jwt_secret: str) -> Session | None:
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    return decode(jwt_secret, token)


def write(response: Response, request: Request, jwt_secret: str, session: Session) -> None:
    token, max_age = encode(jwt_secret, session)
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def clear(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax", secure=is_https(request))
