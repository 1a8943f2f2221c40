"""``GET /v1/audit``: the audit log, read only (docs/api.md, "Audit log"). Who sees what and the
paging are ``services/audit_log.py``. There is no route that writes, changes or deletes a
record."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from warren.cp.api.deps import AUTH_ERRORS, CurrentUser, Db
from warren.cp.http_errors import error_responses
from warren.cp.services import audit_log as svc

router = APIRouter(prefix="/v1/audit", tags=["audit"])
_TEXT = Query(max_length=svc.MAX_FILTER_CHARS)


@router.get("", response_model=svc.AuditPage, responses=error_responses(400, *AUTH_ERRORS))
async def list_audit(
    ctx: CurrentUser,
    db: Db,
    team_id: Annotated[str | None, _TEXT] = None,
    actor: Annotated[str | None, _TEXT] = None,
    action: Annotated[str | None, _TEXT] = None,
    resource_type: Annotated[str | None, _TEXT] = None,
    resource_id: Annotated[str | None, _TEXT] = None,
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=svc.MAX_LIMIT)] = svc.DEFAULT_LIMIT,
    cursor: Annotated[str | None, _TEXT] = None,
) -> svc.AuditPage:
    """Audit records, newest first: a team's owners and admins see their team's, platform
    admins everyone's (``team_id`` narrows to one team). ``actor`` is an actor id (``usr-…``,
    ``key-…``) or type (``user``, ``api_key``, ``system``, ``sandbox_token``); ``since`` is
    inclusive, ``until`` exclusive (RFC 3339). Pass ``next_cursor`` as ``cursor`` for the next
    page; it is absent on the last one."""
    f = svc.AuditFilter(
        team_id=team_id, actor=actor, action=action, resource_type=resource_type,
        resource_id=resource_id, since=since, until=until,
    )  # fmt: skip
    return await svc.list_audit(db, ctx, f, limit=limit, cursor=cursor)
