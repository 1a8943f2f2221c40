"""The dashboard's Audit page: the current team's audit records, newest first, with the API's
filters (actor, action, resource type and id, a time window) and a link to the next page.

It reads through ``services/audit_log.py`` like ``GET /v1/audit``, with the team fixed to the
signed-in viewer's current team: owners and admins of that team (and platform admins) see it;
members get a page saying who may. A filter the service refuses (a bad time, say) is shown on
the page above an empty table instead of an error page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from warren import ids
from warren.cp.dashboard.web import error_page, load_viewer, render, to_login
from warren.cp.services import audit_log as svc
from warren.cp.state import state_of
from warren.errors import InvalidRequest

__all__ = ["pages"]

pages = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
NO_TEAM = "No active team — select or create a team in the sidebar to see its audit log."
MANAGERS_ONLY = "The audit log is available to team owners and admins only."
_TEXT = Query(max_length=svc.MAX_FILTER_CHARS)


def _when(value: str, name: str) -> datetime | None:
    """A filter time from the form (``datetime-local`` sends no zone: read as UTC)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: not a date and time ({value[:40]!r})") from None


@pages.get("/dashboard/audit")
async def audit_page(
    request: Request,
    actor: Annotated[str, _TEXT] = "",
    action: Annotated[str, _TEXT] = "",
    resource_type: Annotated[str, _TEXT] = "",
    resource_id: Annotated[str, _TEXT] = "",
    since: Annotated[str, _TEXT] = "",
    until: Annotated[str, _TEXT] = "",
    cursor: Annotated[str, _TEXT] = "",
) -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    if viewer.ctx.team_id is None:
        return error_page(request, viewer, 404, NO_TEAM)
    if not (viewer.is_manager or viewer.is_admin):
        return error_page(request, viewer, 403, MANAGERS_ONLY)
    shown = {"actor": actor, "action": action, "resource_type": resource_type, "resource_id": resource_id,
             "since": since, "until": until}  # fmt: skip
    page = svc.AuditPage(items=[])
    problem = ""
    try:
        f = svc.AuditFilter(
            team_id=ids.team_id(viewer.ctx.team_id), actor=actor or None, action=action or None,
            resource_type=resource_type or None, resource_id=resource_id or None,
            since=_when(since, "From"), until=_when(until, "To"),
        )  # fmt: skip
        page = await svc.list_audit(
            state_of(request).engine, viewer.ctx, f, limit=PAGE_SIZE, cursor=cursor or None
        )
    except InvalidRequest as e:
        problem = e.message
    kept = {k: v for k, v in shown.items() if v}
    first_url = "/dashboard/audit" + ("?" + urlencode(kept) if kept else "")
    next_url = (
        "/dashboard/audit?" + urlencode({**kept, "cursor": page.next_cursor}) if page.next_cursor else ""
    )
    return render(
        request, "audit.html", viewer=viewer, nav="audit", page="audit", title="Audit log",
        records=page.items, filters=shown, filtered=bool(kept), first_url=first_url, next_url=next_url,
        paged=bool(cursor),
        problem=problem,
    )  # fmt: skip
