"""Rotating sandboxes' E2B envd access tokens (docs/e2b.md §3): bumping a sandbox's token epoch
(``sandboxes.envd_token_epoch``, ``envd_tokens``) voids its old token and every URL signed with
it at once, on every replica (they all read the epoch with the sandbox row).

- :func:`rotate`: one sandbox, on request (``POST /v1/sandboxes/{id}/access-token``), answering
  the new token.
- :func:`revoke_team_tokens`: every running, paused or pending sandbox of a team, in the caller's transaction:
  when a member leaves or is removed, or an API key is revoked (``teams``, ``api_keys``), so
  whoever lost access keeps no token they copied while they had it. Other members get the new
  tokens from E2B's connect / get, or from :func:`rotate`'s answer. The sandboxes' preview
  traffic tokens are voided with them (``preview.rotate_token`` makes a new one), and the
  caller's ``kick`` ends the preview connections they admitted (session 17).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import sandboxes
from warren.cp.services import audit, preview, stream_revocation, stream_slots
from warren.cp.services.context import AuthContext
from warren.cp.services.envd_tokens import envd_access_token
from warren.cp.services.sandboxes import find
from warren.errors import Forbidden, InvalidState

_LIVE = ("running", "paused")  # the sandboxes whose tokens still open anything
# A team-wide bump also covers creates under way: a pending row's epoch is the one its create
# finishes with (session 16; a sandbox pending at a member's removal started at epoch 0).
_BUMPED = ("pending", *_LIVE)


@dataclass(frozen=True)
class Rotated:
    sandbox_id: str
    access_token: str  # the new envd access token (E2B's X-Access-Token)
    epoch: int


async def revoke_team_tokens(conn: AsyncConnection, team_id: uuid.UUID) -> int:
    """Void the tokens of every live or pending sandbox of ``team_id`` in one UPDATE (the
    caller's transaction; the caller calls ``stream_revocation.kick`` once it commits): the envd
    token epoch bumped, the preview traffic token cleared. The number of sandboxes changed."""
    stmt = (
        update(sandboxes)
        .where(sandboxes.c.team_id == team_id, sandboxes.c.status.in_(_BUMPED))
        # Preview traffic tokens go too (session 16): they are random, stored hashed, and a
        # member who created a sandbox or rotated its token had one for as long as the sandbox
        # lived. Void ("": none), not replaced: the team asks for a new one (POST
        # …/traffic-token); the signed preview URLs and cookies made with it end with it.
        .values(envd_token_epoch=sandboxes.c.envd_token_epoch + 1, traffic_token_hash="")
        .returning(sandboxes.c.id)
    )
    bumped = (await conn.execute(stmt)).scalars().all()
    for sb_uuid in bumped:  # this process's proxy caches; other replicas' expire (proxy_cache_s)
        preview.forget(ids.sandbox_id(sb_uuid))
    return len(bumped)


async def rotate(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, *, secret: str) -> Rotated:
    """A new access token for the caller's team's running or paused sandbox: 404 as ``find``,
    409 for any other status, 403 for a sandbox's own token (it may not renew itself)."""
    if ctx.kind == "sandbox_token":
        raise Forbidden("a sandbox access token cannot rotate itself")
    found = await find(engine, ctx, sandbox_id, states=_LIVE)
    async with transaction(engine) as conn:
        epoch = (
            await conn.execute(
                update(sandboxes)
                .where(sandboxes.c.id == found.sb_uuid, sandboxes.c.status.in_(_LIVE))
                .values(envd_token_epoch=sandboxes.c.envd_token_epoch + 1)
                .returning(sandboxes.c.envd_token_epoch)
            )
        ).scalar()
        if epoch is None:
            raise InvalidState("sandbox must be running or paused")  # it ended meanwhile
        await audit.record(
            conn, ctx, team_id=found.row["team_id"], action="rotate_access_token",
            resource_type="sandbox", resource_id=sandbox_id, metadata={"epoch": int(epoch)},
        )  # fmt: skip
    stream_revocation.kick()  # streams opened with the old token end (committed now)
    return Rotated(sandbox_id, envd_access_token(secret, sandbox_id, int(epoch)), int(epoch))


async def created_epoch(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> int:
    """The token epoch a create (or a connect, which may resume) hands its caller (E2B answers
    the token): the row's current one, which a member's removal during the call has bumped. 401
    ``access_revoked`` when the caller's own credentials were revoked while it ran: the sandbox
    stays the team's, its token is not handed out."""
    if not await stream_revocation.still_valid(engine, ctx):
        raise stream_slots.Revoked()
    sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    async with autocommit(engine) as conn:
        epoch = (
            await conn.execute(select(sandboxes.c.envd_token_epoch).where(sandboxes.c.id == sb_uuid))
        ).scalar()
    return int(epoch or 0)
