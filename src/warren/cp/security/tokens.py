"""User and host JWTs (HS256) and opaque tokens.

User JWT (docs/spec.md §7.7): 6 h; claims ``sub`` (usr-…), ``team_id`` (team-…), ``role``, ``email``,
``name``, ``is_admin`` (only when true), ``iat``, ``exp``; no ``typ``. A user with no live team
signs in to a *teamless* token (docs/spec.md §2.1): ``team_id`` and ``role`` are JSON null, and
``services/authn.py`` lets it reach only the routes that find or make a team (403 ``no_team``
elsewhere). A missing ``team_id`` claim is still an invalid token, not a teamless one.
Host JWT (docs/spec.md §3.2): ``typ: "host"``, ``host_id``, ``sub`` (both host-…), 7 d. Each
verifier rejects the other kind.

Expiry is checked against ``warren.clock`` rather than the wall clock so tests can move time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from warren import clock, ids
from warren.errors import InvalidRequest, Unauthorized

USER_JWT_TTL = timedelta(hours=6)
HOST_JWT_TTL = timedelta(days=7)
_ALG = "HS256"
# Signature and shape are verified by PyJWT; time is ours (fakeable clock).
_DECODE_OPTIONS: Any = {
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "require": ["exp", "iat", "sub"],
}


def new_token_hex(nbytes: int = 32) -> str:
    return secrets.token_hex(nbytes)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class UserClaims:
    user_id: uuid.UUID
    team_id: uuid.UUID | None  # None: a teamless token
    role: str
    email: str
    name: str
    is_admin: bool
    issued_at: int
    expires_at: int


def issue_user_jwt(
    secret: str,
    *,
    user_id: uuid.UUID,
    team_id: uuid.UUID | None,
    role: str | None,
    email: str,
    name: str,
    is_admin: bool = False,
) -> str:
    """``team_id`` None (with ``role`` None) issues a teamless token."""
    if (team_id is None) != (role is None):
        raise ValueError("a teamless token has neither a team nor a role")
    now = int(clock.time_s())
    claims: dict[str, Any] = {
        "sub": ids.user_id(user_id),
        "team_id": ids.team_id(team_id) if team_id is not None else None,
        "role": role,
        "email": email,
        "name": name,
        "iat": now,
        "exp": now + int(USER_JWT_TTL.total_seconds()),
    }
    if is_admin:
        claims["is_admin"] = True
    return jwt.encode(claims, secret, algorithm=_ALG)


@functools.lru_cache(maxsize=8192)
def _verified_claims(secret: str, token: str) -> dict[str, Any]:
    """Signature check and parse, memoised: a pure function of (secret, token), so caching it
    skips ~0.1 ms of CPU per request for a token seen before. Nothing about the caller's rights
    is cached — expiry is checked on every call below and the database on every request.
    Failures raise and are therefore never cached."""
    claims: dict[str, Any] = jwt.decode(token, secret, algorithms=[_ALG], options=_DECODE_OPTIONS)
    return claims


def _decode(secret: str, token: str, message: str) -> dict[str, Any]:
    try:
        claims = _verified_claims(secret, token)
    except jwt.PyJWTError as e:
        raise Unauthorized(message) from e
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= clock.time_s():
        raise Unauthorized(message)
    return claims


def verify_user_jwt(secret: str, token: str) -> UserClaims:
    """Signature, expiry and shape of a user JWT. Raises Unauthorized (401)."""
    claims = _decode(secret, token, "invalid or expired token")
    if claims.get("typ") == "host":
        raise Unauthorized("invalid or expired token")
    team: uuid.UUID | None = None
    if "team_id" not in claims or claims["team_id"] is not None:  # JSON null: a teamless token
        try:
            team = ids.parse_id(ids.Kind.TEAM, claims.get("team_id", ""))
        except InvalidRequest as e:
            raise Unauthorized("invalid team ID in token") from e
    try:
        user = ids.parse_id(ids.Kind.USER, claims.get("sub", ""))
    except InvalidRequest as e:
        raise Unauthorized("invalid user ID in token") from e
    return UserClaims(
        user_id=user,
        team_id=team,
        role=str(claims.get("role") or ""),
        email=str(claims.get("email", "")),
        name=str(claims.get("name", "")),
        is_admin=claims.get("is_admin") is True,
        issued_at=int(claims["iat"]),
        expires_at=int(claims["exp"]),
    )


def issue_host_jwt(secret: str, host_id: uuid.UUID) -> str:
    now = int(clock.time_s())
    hid = ids.host_id(host_id)
    claims = {
        "typ": "host",
        "host_id": hid,
        "sub": hid,
        "iat": now,
        "exp": now + int(HOST_JWT_TTL.total_seconds()),
    }
    return jwt.encode(claims, secret, algorithm=_ALG)


def verify_host_jwt(secret: str, token: str) -> uuid.UUID:
    """Verify a host JWT and return the host's UUID. Raises Unauthorized (401)."""
    message = "invalid or expired host token"
    claims = _decode(secret, token, message)
    if claims.get("typ") != "host":
        raise Unauthorized(message)
    try:
        return ids.parse_id(ids.Kind.HOST, claims.get("host_id", ""))
    except InvalidRequest as e:
        raise Unauthorized(message) from e


def signed_with(secret: str, token: str) -> bool:
    """Whether ``token`` is a JWT signed with ``secret`` (HS256): one of this control plane's
    user or host JWTs, expired or not, whatever its claims. One HMAC and no parsing, for telling
    the platform's tokens from anyone else's (the preview proxy keeps them from a sandbox's
    server: cp/proxy/credentials.py). Not an authentication: it says nothing about validity."""
    signing_input, dot, sig = token.rpartition(".")
    if not dot or signing_input.count(".") != 1 or not 40 <= len(sig) <= 48:
        return False  # an HS256 signature is 43 base64url characters
    try:
        raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        want = hmac.new(secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256).digest()
    except (binascii.Error, ValueError):  # not base64, or not ASCII: not one of ours
        return False
    return hmac.compare_digest(raw, want)
