"""Who may use a sandbox's in-sandbox API (E2B's envd plane, docs/e2b.md §1.2): the holder of
its access token, for that one sandbox.

The token is checked before the sandbox is looked up, so a wrong token learns nothing about
whether an id exists. A right token for a sandbox that is gone (or never became running) gives
:class:`~warren.errors.NotFound`, which the envd plane answers as E2B's "was not found" 502.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.services.context import AuthContext
from warren.cp.services.envd_tokens import token_matches
from warren.cp.services.sandboxes import Found, sandbox_model
from warren.errors import InvalidRequest, NotFound, Unauthorized


async def sandbox_access(
    engine: AsyncEngine, secret: str, sandbox_id: str, token: str | None
) -> tuple[AuthContext, Found]:
    """The context of the holder of ``token`` (for sandbox ``sandbox_id`` only) and the sandbox.

    Raises Unauthorized (no or wrong token), NotFound (malformed id, unknown or deleted sandbox).
    """
    if not token or not token_matches(secret, sandbox_id, token):
        raise Unauthorized("missing or invalid access token (X-Access-Token)")
    try:
        sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    except InvalidRequest:
        raise NotFound(f"sandbox {sandbox_id} not found") from None
    async with driver(engine) as conn:
        row = await conn.fetchrow(q.LOOKUP_BY_ID, sb_uuid)
    if row is None or row["status"] in ("stopped", "error", "pending"):
        raise NotFound(f"sandbox {sandbox_id} not found")
    ctx = AuthContext(
        kind="sandbox_token", team_id=row["team_id"], only_sandbox=sandbox_id, owner_id=row["team_owner_id"]
    )
    return ctx, Found(row, sandbox_model(row))
