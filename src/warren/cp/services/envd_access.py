"""Who may use a sandbox's in-sandbox API (E2B's envd plane, docs/e2b.md §1.2): the holder of
its current access token (or of a URL signed with it), for that one sandbox.

The token depends on the sandbox's token epoch (``envd_tokens``), so the sandbox row (read
anyway to route the request, ``queries/sandboxes.py:LOOKUP_BY_ID``, one round trip) comes first
and the token is checked against it; an unknown id is checked as epoch 0. A wrong token is
Unauthorized whether or not the id exists; a right token for a sandbox that is gone (or never
became running) gives :class:`~warren.errors.NotFound`, which the envd plane answers as E2B's
"was not found" 502. Something that cannot be a token is refused before any query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.services import snapshot_hold
from warren.cp.services.context import AuthContext
from warren.cp.services.envd_tokens import TOKEN_PREFIX, envd_access_token, token_matches
from warren.cp.services.sandboxes import Found, sandbox_model
from warren.errors import InvalidRequest, NotFound, Unauthorized

_TOKEN_LEN = len(envd_access_token("x", "x"))  # every token has this length


async def _row(engine: AsyncEngine, sandbox_id: str) -> Mapping[str, Any] | None:
    try:
        sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    except InvalidRequest:
        return None
    async with driver(engine) as conn:
        row: Mapping[str, Any] | None = await conn.fetchrow(q.LOOKUP_BY_ID, sb_uuid)
    return row


def _epoch(row: Mapping[str, Any] | None) -> int:
    return int(row["envd_token_epoch"]) if row is not None else 0


def _found(sandbox_id: str, row: Mapping[str, Any] | None) -> tuple[AuthContext, Found]:
    if row is None or row["status"] in ("stopped", "error", "pending"):
        raise NotFound(f"sandbox {sandbox_id} not found")
    ctx = AuthContext(
        kind="sandbox_token", team_id=row["team_id"], only_sandbox=sandbox_id, owner_id=row["team_owner_id"],
        token_epoch=_epoch(row),
    )  # fmt: skip
    return ctx, Found(row, sandbox_model(row))


async def sandbox_access(
    engine: AsyncEngine, secret: str, sandbox_id: str, token: str | None
) -> tuple[AuthContext, Found]:
    """The context of the holder of ``token`` (for sandbox ``sandbox_id`` only) and the sandbox.

    Raises Unauthorized (no or wrong token, or one of an older epoch), NotFound (malformed id,
    unknown or deleted sandbox).
    """
    if not token or len(token) != _TOKEN_LEN or not token.startswith(TOKEN_PREFIX):
        raise Unauthorized("missing or invalid access token (X-Access-Token)")
    given = token

    def check(epoch: int) -> None:
        if not token_matches(secret, sandbox_id, given, epoch):
            raise Unauthorized("missing or invalid access token (X-Access-Token)")

    return await _checked(engine, sandbox_id, check)


async def signed_access(
    engine: AsyncEngine, sandbox_id: str, check: Callable[[int], None]
) -> tuple[AuthContext, Found]:
    """Like :func:`sandbox_access` for a signed URL: ``check(epoch)`` verifies the signature
    against the sandbox's current token (raising Unauthorized) before anything else is said."""
    return await _checked(engine, sandbox_id, check)


async def _checked(
    engine: AsyncEngine, sandbox_id: str, check: Callable[[int], None]
) -> tuple[AuthContext, Found]:
    """The sandbox once ``check`` passed; one paused for its own snapshot is waited for
    (``snapshot_hold``: only a caller with the sandbox's token waits) and read again, checked
    again (its token may have been rotated meanwhile)."""
    row = await _row(engine, sandbox_id)
    check(_epoch(row))
    ctx, found = _found(sandbox_id, row)
    while found.sandbox.status == "paused" and await snapshot_hold.wait_out(engine, ctx, found.sb_uuid):
        row = await _row(engine, sandbox_id)
        check(_epoch(row))
        ctx, found = _found(sandbox_id, row)
    return ctx, found
