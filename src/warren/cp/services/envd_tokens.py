"""Per-sandbox access tokens of the E2B in-sandbox plane (docs/e2b.md §3).

E2B's SDK sends no API key to a sandbox's own API (envd): its ``X-Access-Token`` and its signed
file URLs (sha256 over the path, the operation, the user and this token) are the only protection.
So every sandbox has one, always, and the server must be able to recompute it to check a
signature. It is derived rather than stored: ``ea_`` + base64url(HMAC-SHA256(key, sandbox id)),
the key itself derived from the control plane's JWT secret, which every replica shares. Nothing
to leak from the database; rotating the JWT secret rotates every token.

One sandbox's token rotates by its epoch (``sandboxes.envd_token_epoch``, migration 0018): epoch
``n > 0`` MACs ``"<sandbox id>\x00<n>"`` instead (a sandbox id holds no NUL, so no epoch's input
is another's), and epoch 0 is the id alone, the token sandboxes had before epochs. The epoch is
bumped by ``POST /v1/sandboxes/{id}/access-token`` and, for every live sandbox of a team, when a
member leaves or is removed or an API key is revoked (``services/envd_rotation.py``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

TOKEN_PREFIX = "ea_"  # noqa: S105 - a prefix, not a secret
_KEY_LABEL = b"warren e2b envd access token v1"


@functools.lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def envd_access_token(secret: str, sandbox_id: str, epoch: int = 0) -> str:
    """The access token of sandbox ``sandbox_id`` (its public ``sb-…`` id) at token ``epoch``."""
    data = sandbox_id if epoch == 0 else f"{sandbox_id}\x00{epoch}"
    mac = hmac.new(_key(secret), data.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def token_matches(secret: str, sandbox_id: str, presented: str, epoch: int = 0) -> bool:
    """Constant-time check of a presented ``X-Access-Token`` against sandbox ``sandbox_id``'s
    token at ``epoch`` (only the current epoch's token is accepted)."""
    want = envd_access_token(secret, sandbox_id, epoch).encode("ascii")
    return hmac.compare_digest(want, presented.encode("utf-8", "surrogatepass"))
