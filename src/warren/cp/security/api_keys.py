"""Team API keys (docs/spec.md §7.8): ``wrn_`` + 32 lowercase hex, SHA-256 hex at rest, 10-char prefix.

A presented key is looked up by the SHA-256 of the whole plaintext through a unique index, so
the secret itself is never compared byte by byte: equal hashes are found by the index, and the
hash of a guess reveals nothing about the stored key.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from warren.cp.security.tokens import sha256_hex

API_KEY_PREFIX = "wrn_"
PREFIX_LEN = 10
_SHAPE = re.compile(r"^wrn_[0-9a-f]{32}$")


@dataclass(frozen=True)
class GeneratedApiKey:
    plaintext: str
    key_hash: str
    key_prefix: str


def generate_api_key() -> GeneratedApiKey:
    plaintext = API_KEY_PREFIX + secrets.token_hex(16)
    return GeneratedApiKey(
        plaintext=plaintext, key_hash=hash_api_key(plaintext), key_prefix=plaintext[:PREFIX_LEN]
    )


def hash_api_key(plaintext: str) -> str:
    return sha256_hex(plaintext)


def looks_like_api_key(value: str) -> bool:
    """Cheap shape check: a malformed key is refused without a database round trip."""
    return bool(_SHAPE.match(value))
