"""The dashboard's pages (server-rendered with Jinja2) and its static files.

Every page re-checks the session against the database (``web.load_viewer``) and reads its data
through ``warren.cp.services`` — the same functions the REST API calls — so every rule lives
once. State changes go through ``actions.py`` (CSRF-checked JSON endpoints).

``router`` bundles the pages, the sign-in routes and the actions; it is listed in
``warren.cp.api.ROUTERS``.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from warren import ids
from warren.cp.dashboard import actions, audit_page, auth_routes, template_pages, terminal
from warren.cp.dashboard.format import iso
from warren.cp.dashboard.web import (
    STATIC_DIR,
    Viewer,
    apply_security_headers,
    error_page,
    load_viewer,
    reader_context,
    render,
    session_auth,
    to_login,
)
from warren.cp.services import api_keys as keys_svc
from warren.cp.services import hosts as hosts_svc
from warren.cp.services import limits as limits_svc
from warren.cp.services import metrics as metrics_svc
from warren.cp.services import sandboxes as sandboxes_svc
from warren.cp.services import snapshots as snapshots_svc
from warren.cp.services import team_invitations as invitations_svc
from warren.cp.services import teams as teams_svc
from warren.cp.state import state_of
from warren.errors import WarrenError

pages = APIRouter(include_in_schema=False)

NO_TEAM_HINT = "No active team — select or create a team in the sidebar to create sandboxes."
NO_TEAM_GENERIC = "No active team — select or create a team in the sidebar to continue."
METRIC_RANGES = ("5m", "10m", "1h", "6h", "24h")
WELCOME = auth_routes.WELCOME
INVITATIONS = "/dashboard/invitations"
INVITATIONS_PAGE_SIZE = 25
ADMIN_BYOC_PAGE_SIZE = 50


def _page(
    request: Request, viewer: Viewer, template: str, *, nav: str, title: str, **context: Any
) -> HTMLResponse:
    return render(request, template, viewer=viewer, nav=nav, page=nav, title=title, **context)


async def _team_templates(request: Request, viewer: Viewer) -> list[Any]:
    return list(await snapshots_svc.list_templates(state_of(request).engine, viewer.ctx, None))


# ------------------------------------------------------------------------------------- sandboxes


@pages.get("/dashboard/sandboxes")
async def sandboxes_page(request: Request) -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    if viewer.ctx.team_id is None:
        return _page(
            request, viewer, "sandboxes.html", nav="sandboxes", title="Sandboxes",
            sandboxes=[], running=0, templates=[], no_team_hint=NO_TEAM_HINT,
        )  # fmt: skip
    engine = state_of(request).engine
    sbs, templates = await asyncio.gather(
        sandboxes_svc.list_sandboxes(engine, viewer.ctx), _team_templates(request, viewer)
    )
    return _page(
        request, viewer, "sandboxes.html", nav="sandboxes", title="Sandboxes",
        sandboxes=sbs, running=sum(1 for s in sbs if s.status == "running"), templates=templates,
        no_team_hint=NO_TEAM_HINT,
    )  # fmt: skip


@pages.get("/dashboard/sandboxes/rows")
async def sandbox_rows(request: Request) -> Response:
    """The sandbox table alone, for the list's refresh button and 30 s auto-refresh."""
    act = await reader_context(request)
    sbs = await sandboxes_svc.list_sandboxes(act.engine, act.ctx)
    return render(
        request, "_sandbox_list.html", sandboxes=sbs, running=sum(1 for s in sbs if s.status == "running")
    )


@pages.get("/dashboard/sandboxes/{sandbox_id}")
async def sandbox_detail(request: Request, sandbox_id: str, range: str = "10m") -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    if viewer.ctx.team_id is None:
        return error_page(request, viewer, 404, NO_TEAM_GENERIC)
    try:
        sb = await sandboxes_svc.get_sandbox(state_of(request).engine, viewer.ctx, sandbox_id)
    except WarrenError as e:
        return error_page(request, viewer, 404, e.message)
    chosen = range if range in METRIC_RANGES else "10m"
    return _page(
        request, viewer, "sandbox_detail.html", nav="sandboxes", title=sb.id,
        s=sb, live=sb.status in ("running", "paused"), ranges=METRIC_RANGES, range=chosen,
    )  # fmt: skip


@pages.get("/dashboard/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(request: Request, sandbox_id: str, range: str = "10m") -> Response:
    """CPU % and memory MB points for the detail page's charts (polled every 10 s)."""
    act = await reader_context(request)
    chosen = range if range in METRIC_RANGES else "10m"
    data = await metrics_svc.get_metrics(act.engine, state_of(request).pool, act.ctx, sandbox_id, chosen)
    points = [
        {
            "ts": iso(p.timestamp),
            "cpu_pct": round(p.cpu_pct, 2),
            "mem_mb": round(p.mem_bytes / (1024 * 1024), 1),
        }
        for p in data.points
    ]
    return JSONResponse({"sandbox_id": sandbox_id, "range": data.range, "points": points})


# --------------------------------------------------------------------------- teamless landing


@pages.get(WELCOME)
async def welcome_page(request: Request, cursor: str | None = None) -> Response:
    """Where a user with no live team lands after signing in (docs/spec.md §2.1): their pending
    invitations, a page at a time, and a team to create. A session acting for a team has
    nothing to do here and goes home."""
    return await _invitations_page(request, cursor, path=WELCOME)


@pages.get(INVITATIONS)
async def invitations_page(request: Request, cursor: str | None = None) -> Response:
    """The viewer's pending invitations, a page at a time (the team page shows the newest 100),
    for anyone signed in; with no team it is the landing page itself."""
    return await _invitations_page(request, cursor, path=INVITATIONS)


async def _invitations_page(request: Request, cursor: str | None, *, path: str) -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    teamless = viewer.ctx.team_id is None
    if path == WELCOME and not teamless:
        return RedirectResponse(auth_routes.HOME, status_code=303)
    try:
        page = await invitations_svc.list_mine(
            state_of(request).engine, viewer.ctx, limit=INVITATIONS_PAGE_SIZE, cursor=cursor
        )
    except WarrenError:  # a stale or mangled cursor: start again from the newest
        return RedirectResponse(path, status_code=303)
    return _page(
        request, viewer, "welcome.html", nav="invitations", title="Welcome" if teamless else "Invitations",
        teamless_landing=teamless, invitations=page.items, next_cursor=page.next_cursor, cursor=cursor,
        path=path,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ keys


@pages.get("/dashboard/keys")
async def keys_page(request: Request) -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    keys = await keys_svc.list_keys(state_of(request).engine, viewer.ctx) if viewer.ctx.team_id else []
    return _page(
        request, viewer, "keys.html", nav="keys", title="API keys", keys=keys, no_team_hint=NO_TEAM_GENERIC
    )


# ------------------------------------------------------------------------------------------ team


@pages.get("/dashboard/team")
async def team_page(request: Request) -> Response:
    found = await session_auth(request)
    if found is None:
        return to_login(request)
    sess, ctx = found
    engine = state_of(request).engine
    detail: teams_svc.TeamDetail | None = None
    mine_page = await invitations_svc.list_mine(engine, ctx)
    mine, more_mine = mine_page.items, mine_page.next_cursor is not None
    if ctx.team_id is None:
        team_list = await teams_svc.list_teams(engine, ctx)
    else:
        # docs/spec.md §8.6: the team detail is fetched in parallel with the full team list, which
        # powers the "only team" guard on delete/leave.
        team_list, detail, quotas = await asyncio.gather(
            teams_svc.list_teams(engine, ctx),
            teams_svc.get_team(engine, ctx, ctx.team_id),
            limits_svc.team_report(engine, state_of(request).settings, ctx.team_id),
        )
    viewer = Viewer(session=sess, ctx=ctx, teams=team_list)
    if detail is None or viewer.team is None or ctx.team_id is None:
        return _page(
            request, viewer, "team.html", nav="team", title="Team", my_invitations=mine, more_mine=more_mine
        )
    me = ids.user_id(ctx.user_id) if ctx.user_id else ""
    # "My role" comes from the member list, not from the token (docs/spec.md §8.6).
    my_role = next((m.role for m in detail.members if m.user_id == me), viewer.role)
    can_manage = my_role in ("owner", "admin")
    pending = await invitations_svc.list_for_team(engine, ctx, ctx.team_id) if can_manage else []
    # Managers' removal dialog offers to revoke the keys the member made (their count).
    key_counts = await keys_svc.counts_by_creator(engine, ctx.team_id) if can_manage else {}
    return _page(
        request, viewer, "team.html", nav="team", title="Team",
        team=detail.team, members=detail.members, me=me, my_role=my_role,
        can_manage=can_manage, is_last_team=len(team_list) <= 1,
        quota_rows=_quota_rows(quotas), my_invitations=mine, more_mine=more_mine, invitations=pending,
        key_counts=key_counts,
    )  # fmt: skip


# What the team page's "Usage and quotas" card lists: (label, used, quota, unit).
_QUOTA_LABELS = (
    ("sandboxes", "Active sandboxes", ""),
    ("vcpus", "vCPUs", ""),
    ("memory_mb", "Memory", "MB"),
    ("snapshots", "Snapshots", ""),
    ("snapshot_mb", "Snapshot storage", "MB"),
    ("store_mb", "Template store", "MB"),
)


def _quota_rows(report: limits_svc.TeamQuotaReport) -> list[tuple[str, str, int, int, str]]:
    return [
        (key, label, getattr(report.usage, key), getattr(report.quotas, key), unit)
        for key, label, unit in _QUOTA_LABELS
    ]


# ----------------------------------------------------------------------------------------- hosts


@pages.get("/dashboard/hosts")
async def hosts_page(request: Request) -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    team = viewer.team
    if team is None or not team.is_byoc:
        return error_page(
            request, viewer, 404, "Hosts are available to teams with BYOC (bring your own compute) enabled."
        )
    all_hosts = await hosts_svc.list_hosts(state_of(request).engine, viewer.ctx)
    # A platform admin sees every host; this page is about the team's own.
    team_hosts = [h for h in all_hosts if h.type == "byoc" and h.team_id == team.id]
    online = sum(1 for h in team_hosts if h.status == "online")
    offline = sum(1 for h in team_hosts if h.status in ("offline", "unreachable"))
    return _page(
        request, viewer, "hosts.html", nav="hosts", title="Hosts",
        hosts=team_hosts, online=online, offline=offline, can_manage=viewer.is_manager,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- admin


@dataclass
class _TeamHosts:
    team_id: str
    team_name: str | None
    hosts: list[hosts_svc.Host]


@pages.get("/admin")
async def admin_page(request: Request, tab: str = "platform", page: int = 1) -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    if not viewer.is_admin:
        return error_page(request, viewer, 403, "The admin area is for platform admins.")
    all_hosts = await hosts_svc.list_hosts(state_of(request).engine, viewer.ctx)
    platform = [h for h in all_hosts if h.type == "regular"]
    byoc = [h for h in all_hosts if h.type == "byoc"]
    grouped: dict[str, list[hosts_svc.Host]] = defaultdict(list)
    names: dict[str, str | None] = {}
    for h in byoc:
        key = h.team_id or ""
        grouped[key].append(h)
        names[key] = h.team_name
    groups = [_TeamHosts(team_id=k, team_name=names[k], hosts=v) for k, v in grouped.items()]
    groups.sort(key=lambda g: (g.team_name or "").lower())
    # 50 BYOC hosts per page, whole teams kept together where possible (docs/spec.md §8.10).
    paged: list[list[_TeamHosts]] = [[]]
    count = 0
    for g in groups:
        if count and count + len(g.hosts) > ADMIN_BYOC_PAGE_SIZE:
            paged.append([])
            count = 0
        paged[-1].append(g)
        count += len(g.hosts)
    page = min(max(page, 1), len(paged))
    limits = await limits_svc.get_platform_limits(state_of(request).engine, state_of(request).settings)
    return _page(
        request, viewer, "admin.html", nav="admin", title="Admin", limits=limits,
        tab="byoc" if tab == "byoc" else "platform", platform_hosts=platform,
        byoc_groups=paged[page - 1], byoc_count=len(byoc), page_no=page, pages=len(paged),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- static


@pages.get("/static/{path:path}")
async def static(path: str) -> Response:
    target = (STATIC_DIR / path).resolve()
    if STATIC_DIR.resolve() not in target.parents or not target.is_file():
        return apply_security_headers(Response("not found", status_code=404, media_type="text/plain"))
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    resp = FileResponse(target, media_type=media_type)
    resp.headers["Cache-Control"] = "public, max-age=3600"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


router = APIRouter(include_in_schema=False)
router.include_router(auth_routes.router)
router.include_router(pages)
router.include_router(template_pages.pages)
router.include_router(audit_page.pages)
router.include_router(actions.router)
router.include_router(terminal.router)
