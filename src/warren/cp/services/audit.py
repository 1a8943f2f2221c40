"""Audit log writes (SPEC §9.1). Best effort: a failed write is logged and never fails the
request that caused it, because the action it describes has already happened."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import audit_logs
from warren.cp.services.context import AuthContext

log = logging.getLogger("warren.audit")


def actor_of(ctx: AuthContext | None) -> tuple[str, str, str]:
    """(actor_type, actor_id, actor_name) for an auth context; None is the system."""
    if ctx is None:
        return "system", "", "system"
    if ctx.kind == "api_key" and ctx.api_key_id is not None:
        return "api_key", ids.api_key_id(ctx.api_key_id), ctx.api_key_name
    if ctx.user_id is not None:
        return "user", ids.user_id(ctx.user_id), ctx.name or ctx.email
    return "system", "", "system"


async def record(
    db: AsyncEngine | AsyncConnection,
    ctx: AuthContext | None,
    *,
    team_id: uuid.UUID | None,
    action: str,
    resource_type: str,
    resource_id: str = "",
    scope: Literal["team", "admin"] = "team",
    status: Literal["success", "info", "warning", "error"] = "success",
    metadata: dict[str, Any] | None = None,
) -> None:
    actor_type, actor_id, actor_name = actor_of(ctx)
    stmt = audit_logs.insert().values(
        id=ids.new_uuid(),
        team_id=team_id,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=actor_name,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        scope=scope,
        status=status,
        metadata=metadata or {},
        created_at=clock.now(),
    )
    try:
        if isinstance(db, AsyncConnection):
            # Inside the caller's transaction: a savepoint keeps a failed insert from poisoning it.
            async with db.begin_nested():
                await db.execute(stmt)
        else:
            async with db.begin() as conn:
                await conn.execute(stmt)
    except Exception:
        log.exception(
            "audit write failed: action=%s resource=%s/%s team=%s",
            action,
            resource_type,
            resource_id,
            team_id,
        )
