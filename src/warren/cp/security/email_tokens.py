"""Email verification links' tokens (services/email_verification.py): ``<user>.<expiry>.<mac>``.

The MAC (HMAC-SHA256, under a key derived from the JWT secret for this use alone, so a token
is never anything else's signature) covers the user id, the expiry and the email address the
link was sent to: a link proves that whoever opened it read mail sent to that address, and
dies if the account's email is not that address any more. Single use is the service's: a
link verifies an unverified account once.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from warren.cp.security.tokens import constant_time_equals
from warren.errors import InvalidRequest

_LABEL = b"warren email verification v1"


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def _mac(secret: str, user_id: uuid.UUID, expires: int, email: str) -> str:
    message = f"{user_id.hex}.{expires}.{email}".encode()
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def issue(secret: str, user_id: uuid.UUID, email: str, expires: int) -> str:
    """A token for ``user_id`` holding ``email``, good until ``expires`` (Unix seconds)."""
    return f"{user_id.hex}.{expires}.{_mac(secret, user_id, expires, email)}"


def parse(token: str) -> tuple[uuid.UUID, int, str]:
    """(user id, expiry, mac) of a well-formed token; InvalidRequest otherwise."""
    parts = token.split(".")
    try:
        if len(parts) != 3 or len(parts[0]) != 32 or not parts[1].isdigit() or len(parts[2]) != 64:
            raise ValueError(token)
        return uuid.UUID(hex=parts[0]), int(parts[1]), parts[2]
    except ValueError as e:
        raise InvalidRequest("invalid verification link", code="invalid_token") from e


def matches(secret: str, user_id: uuid.UUID, expires: int, email: str, mac: str) -> bool:
    return constant_time_equals(mac, _mac(secret, user_id, expires, email))
