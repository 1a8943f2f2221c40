"""Signed file URLs (docs/networking.md §6): a download or upload URL for one file of one
sandbox that works without an API key until it expires.

The URL carries the sandbox, its team, the path, the user, the expiry and a signature: HMAC-SHA256
over all of them *and the operation*, keyed by a key derived from the CP's secret (HMAC of the
secret and a fixed label, so it is never a JWT key nor the preview URLs' key). Verification is
constant-time; a changed byte anywhere (another path, another sandbox, download for upload, a
later expiry) fails it. The file is then read or written exactly as the authenticated streaming
routes do, as the sandbox's team, through ``services.files``.

Since session 16 the signature also covers the sandbox's token epoch (``envd_tokens``; epoch 0
signs exactly what URLs signed before), so a URL dies with the E2B envd token of its time: a
member's removal or departure, an API key's revocation and ``POST …/access-token`` void every
URL made before them (a URL lasts up to a week), and a transfer under way through one ends
(``stream_revocation``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import files, sandboxes
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.exec import check_user
from warren.errors import Forbidden, InvalidRequest

Op = Literal["download", "upload"]
DEFAULT_EXPIRES_S = 3600
MAX_EXPIRES_S = 7 * 24 * 3600  # a week: a leaked URL stays useful for at most that long
MAX_PATH = 4096
_KEY_LABEL = b"warren signed file url v1"


class SignedUrl(BaseModel):
    url: str
    method: str
    expires_at: int  # unix seconds


@dataclass(frozen=True)
class Grant:
    """What a verified signed URL allows: ``op`` on ``path`` of one sandbox, as ``user``."""

    sandbox_id: str
    team_id: uuid.UUID
    path: str
    user: str
    epoch: int = 0  # the sandbox's token epoch the URL was signed at
    owner_id: uuid.UUID | None = None  # the team's owner: transfers count in its streams

    def context(self) -> AuthContext:
        # The sandbox's team acts, as it does through its API keys; the signature is the
        # credential, for this sandbox only, while the token epoch holds (stream_revocation).
        return AuthContext(
            kind="api_key", team_id=self.team_id, owner_id=self.owner_id,
            only_sandbox=self.sandbox_id, token_epoch=self.epoch,
        )  # fmt: skip


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def signature(
    secret: str, op: Op, sandbox_id: str, team: str, path: str, user: str, exp: int, epoch: int = 0
) -> str:
    # JSON: unambiguous for any path (a newline or a separator in a path cannot shift fields).
    # Epoch 0 signs the fields URLs had before epochs, so those stay valid until a rotation.
    fields: list[object] = [op, sandbox_id, team, path, user, exp] + ([epoch] if epoch else [])
    msg = json.dumps(fields, separators=(",", ":")).encode()
    mac = hmac.new(_key(secret), msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _check_path(path: str) -> str:
    if not path or "\0" in path or len(path) > MAX_PATH:
        raise InvalidRequest(f"path is required (at most {MAX_PATH} bytes)")
    return path


async def make(
    engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, op: Op, path: str, user: str,
    expires_s: int, *, secret: str, base_url: str,
) -> SignedUrl:  # fmt: skip
    """A signed URL for the caller's sandbox (404 for another team's): ``expires_s`` seconds
    from now, 1..MAX_EXPIRES_S."""
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise InvalidRequest(f"expires must be 1..{MAX_EXPIRES_S} seconds")
    _check_path(path)
    check_user(user)
    team_uuid = require_team(ctx)
    found = await sandboxes.find(engine, ctx, sandbox_id)
    exp = int(clock.time_s()) + expires_s
    team = ids.team_id(team_uuid)
    epoch = int(found.row.get("envd_token_epoch") or 0)
    sig = signature(secret, op, sandbox_id, team, path, user, exp, epoch)
    query = urlencode({"path": path, "user": user, "team": team, "exp": exp, "sig": sig})
    url = f"{base_url.rstrip('/')}/v1/sandboxes/{sandbox_id}/files/signed/{op}?{query}"
    return SignedUrl(url=url, method="GET" if op == "download" else "PUT", expires_at=exp)


async def _sandbox_row(engine: AsyncEngine, sandbox_id: str) -> Any:
    """The sandbox's row with its team's owner (None: no such sandbox; its epoch is then 0 and
    the file calls answer 404 as before)."""
    try:
        sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    except InvalidRequest:
        return None
    async with driver(engine) as conn:
        return await conn.fetchrow(q.LOOKUP_BY_ID, sb_uuid)


async def verify(
    engine: AsyncEngine, op: Op, sandbox_id: str, path: str, user: str, team: str, exp: str, sig: str,
    *, secret: str,
) -> Grant:  # fmt: skip
    """The grant a signed URL carries, or 403 (``signature_invalid`` / ``url_expired``). What
    cannot be a signed URL is refused before the sandbox's row (its token epoch) is read."""
    try:
        exp_s = int(exp)
        team_uuid = ids.parse_id(ids.Kind.TEAM, team)
    except (ValueError, InvalidRequest):
        raise Forbidden("invalid signed URL", code="signature_invalid") from None
    if len(path) > MAX_PATH or len(user) > 64 or len(sig) > 64 or not sig.isascii():
        raise Forbidden("invalid signed URL", code="signature_invalid")
    row = await _sandbox_row(engine, sandbox_id)
    epoch = int(row["envd_token_epoch"]) if row is not None else 0
    want = signature(secret, op, sandbox_id, team, path, user, exp_s, epoch)
    if not hmac.compare_digest(want.encode("ascii"), sig.encode("ascii")):
        raise Forbidden("invalid signed URL", code="signature_invalid")
    if exp_s <= clock.time_s():
        raise Forbidden("the signed URL has expired", code="url_expired")
    owner = row["team_owner_id"] if row is not None else None
    return Grant(sandbox_id, team_uuid, path, user, epoch, owner)


async def download(
    engine: AsyncEngine, pool: HostClientPool, grant: Grant, *, max_streams: int
) -> AsyncIterator[bytes]:
    """The file, streamed (404 before any byte when it is missing), as the files API reads it
    (a stream of the granting team's)."""
    body = json.dumps({"path": grant.path, "user": grant.user}).encode()
    return await files.open_read(
        engine, pool, grant.context(), grant.sandbox_id, body, max_streams=max_streams
    )


async def upload(
    engine: AsyncEngine, pool: HostClientPool, grant: Grant, chunks: AsyncIterator[bytes], *, max_streams: int
) -> None:
    """The request body streamed into the file (replaced atomically once whole), a stream of the
    granting team's."""
    ctx, sid = grant.context(), grant.sandbox_id
    tgt = await files.upload_target(engine, pool, ctx, sid, grant.user, max_streams=max_streams)
    await files.write_stream(tgt, grant.path, chunks)
