"""The platform's credentials across the preview proxy (docs/networking.md §3).

A client that sends its Warren API key or JWT to a preview URL (a script that sets its headers
for every request, an SDK session's HTTP client pointed at a sandbox's port) would hand it to
whoever runs that sandbox — another tenant, on a public port. So the proxy removes:

- ``X-API-Key`` whose value is a Warren API key (``wrn_…``) or a Warren JWT;
- ``Authorization`` whose credential (what follows the scheme, ``Bearer`` or any other, or the
  whole value) is a Warren API key or a JWT signed with the CP's secret (a user's or a host's,
  expired or not).

Any other ``Authorization`` (Basic, the app's own bearer tokens, JWTs of other issuers) and any
other ``X-API-Key`` pass untouched: a sandbox's app may have its own auth. The JWT check is one
HMAC with the secret the proxy holds anyway (signed URLs), done only for a value shaped like a
JWT; a request without these headers pays nothing (``app._forward_headers``).
"""

from __future__ import annotations

from warren.cp.security.api_keys import API_KEY_PREFIX
from warren.cp.security.tokens import signed_with

HEADERS = frozenset({b"authorization", b"x-api-key"})
_KEY_PREFIX = API_KEY_PREFIX.encode()


def _is_platform_credential(value: bytes, secret: str) -> bool:
    if value.startswith(_KEY_PREFIX):
        return True
    return value.count(b".") == 2 and signed_with(secret, value.decode("latin-1"))


def is_platform(name: bytes, value: bytes, secret: str) -> bool:
    """Whether the header ``name`` (one of :data:`HEADERS`, lower case) carries one of the
    platform's credentials, so it must not reach the sandbox's server."""
    parts = value.split(None, 1)  # "<scheme> <credential>", or the credential alone
    if not parts:
        return False
    return _is_platform_credential(parts[-1].strip(), secret)
