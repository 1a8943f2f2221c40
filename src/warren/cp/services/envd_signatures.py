"""E2B's signed file URLs (docs/e2b.md §3.2): ``download_url()`` and ``upload_url()`` of E2B's SDK
sign a path, an operation and a user with the sandbox's envd access token, so the URL works
without the ``X-Access-Token`` header.

The scheme is E2B's, so the SDK's URLs verify unchanged: ``v1_`` + unpadded base64 of
sha256(``"<path>:<read|write>:<user or ''>:<token>"``), with ``":<expiration>"`` appended when
the URL expires (unix seconds, then also in the query as ``signature_expiration``). The token
is recomputed from the sandbox id and its current token epoch (``envd_tokens``: a rotation
voids every URL signed with an older token), the comparison is constant-time, and an
expired URL is refused even when its signature is right.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from warren import clock
from warren.cp.services.envd_tokens import envd_access_token
from warren.errors import Unauthorized

Operation = Literal["read", "write"]
PREFIX = "v1_"
_MAX_SIGNATURE = 128  # a v1 signature is 46 characters; anything much longer is not one
_MAX_EXPIRATION_DIGITS = 12


def signature(path: str, op: Operation, user: str, token: str, expiration: int | None) -> str:
    """The signature E2B's SDK puts in a URL for ``op`` on ``path`` as ``user`` ("" = default)."""
    raw = f"{path}:{op}:{user}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()
    return PREFIX + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def well_formed(sig: str, expiration: str | None) -> int | None:
    """The expiration of a signature that can be one (checked before the sandbox is looked up,
    so junk costs no query), or Unauthorized."""
    exp: int | None = None
    if expiration is not None:
        if not expiration.isdigit() or len(expiration) > _MAX_EXPIRATION_DIGITS:
            raise Unauthorized("invalid signature")
        exp = int(expiration)
    if not sig.startswith(PREFIX) or len(sig) > _MAX_SIGNATURE or not sig.isascii():
        raise Unauthorized("invalid signature")
    return exp


def verify(
    secret: str,
    sandbox_id: str,
    path: str,
    op: Operation,
    user: str,
    sig: str,
    expiration: str | None,
    epoch: int = 0,
) -> None:
    """Accept a signed request for sandbox ``sandbox_id`` at token ``epoch``, or raise
    Unauthorized (a malformed, wrong or expired signature; the message never says which part was
    wrong)."""
    exp = well_formed(sig, expiration)
    want = signature(path, op, user, envd_access_token(secret, sandbox_id, epoch), exp)
    if not hmac.compare_digest(want.encode("ascii"), sig.encode("ascii")):
        raise Unauthorized("invalid signature")
    if exp is not None and exp <= clock.time_s():
        raise Unauthorized("the signed URL has expired")
