"""Traffic tokens of preview URLs (docs/networking.md §3): ``wtt_`` + 32 random bytes; the
database keeps only the sha256 hex. Its own module so the create path (``sandboxes``) and the
preview rules (``preview``) share it without importing each other."""

from __future__ import annotations

import functools
import hashlib
import secrets

TOKEN_PREFIX = "wtt_"  # noqa: S105 - a prefix, not a secret


def new_traffic_token() -> tuple[str, str]:
    """A fresh token and the sha256 hex the database keeps."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_hash(token)


@functools.lru_cache(maxsize=1024)  # the proxy checks the same few tokens on every request
def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
