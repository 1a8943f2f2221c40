"""Credentials: password hashing, user/host JWTs, API keys and opaque tokens.

Everything secret-related lives here so that the rules (algorithms, lifetimes, constant-time
comparison) are written once. Nothing in this package touches the database.
"""

from warren.cp.security.api_keys import (
    API_KEY_PREFIX,
    GeneratedApiKey,
    generate_api_key,
    hash_api_key,
    looks_like_api_key,
)
from warren.cp.security.passwords import hash_password, verify_password
from warren.cp.security.tokens import (
    HOST_JWT_TTL,
    USER_JWT_TTL,
    UserClaims,
    constant_time_equals,
    issue_host_jwt,
    issue_user_jwt,
    new_token_hex,
    sha256_hex,
    verify_host_jwt,
    verify_user_jwt,
)

__all__ = [
    "API_KEY_PREFIX",
    "HOST_JWT_TTL",
    "USER_JWT_TTL",
    "GeneratedApiKey",
    "UserClaims",
    "constant_time_equals",
    "generate_api_key",
    "hash_api_key",
    "hash_password",
    "issue_host_jwt",
    "issue_user_jwt",
    "looks_like_api_key",
    "new_token_hex",
    "sha256_hex",
    "verify_host_jwt",
    "verify_password",
    "verify_user_jwt",
]
