"""The dashboard's Templates pages: the list (templates with their source, versions, tags and
size, and the team's recent builds), one template (its versions and builds), and one build
(its state and its log, live while it runs).

Like every page, they read through ``warren.cp.services`` (the REST API's functions). The build
log is tenant-controlled text: the page renders it through Jinja's autoescape, and
``static/build_log.js`` appends what follows as text nodes, polling ``…/log?offset=N`` (a
read-only GET on the signed-in session) until the build ends.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from warren.cp.dashboard.web import Viewer, error_page, load_viewer, reader_context, render, to_login
from warren.cp.services import snapshots as snapshots_svc
from warren.cp.services import template_build_list as recent_svc
from warren.cp.services import template_builds as builds_svc
from warren.cp.services import templates as templates_svc
from warren.cp.state import state_of
from warren.errors import NotFound, WarrenError

__all__ = ["pages"]

pages = APIRouter(include_in_schema=False)

NO_TEAM_HINT = "No active team — select or create a team in the sidebar to create sandboxes."
# The build page shows the log's last MiB (the whole log is in the API); each poll reads up to
# 256 KiB, so a fast build's log arrives in a few polls without giant DOM appends.
PAGE_LOG_BYTES = 1024 * 1024
POLL_LOG_BYTES = 256 * 1024


def _newest_first(rows: list[Any]) -> list[Any]:
    """One entry per name (the snapshots listing has a row per version, newest first)."""
    seen: dict[str, Any] = {}
    for r in rows:
        seen.setdefault(r.name, r)
    return list(seen.values())


async def _team_viewer(request: Request) -> Viewer | Response:
    """The signed-in viewer of a page about one of the team's templates, or the response to
    send instead: the sign-in page, or a 404 while no team is active."""
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    if viewer.ctx.team_id is None:
        return error_page(request, viewer, 404, NO_TEAM_HINT)
    return viewer


@pages.get("/dashboard/templates")
async def templates_page(request: Request, type: str = "all") -> Response:
    viewer = await load_viewer(request)
    if viewer is None:
        return to_login(request)
    type_filter = type if type in ("all", "snapshot", "base") else "all"
    summaries: list[templates_svc.TemplateSummary] = []
    launchable: list[Any] = []
    builds: list[builds_svc.BuildInfo] = []
    if viewer.ctx.team_id is not None:
        engine = state_of(request).engine
        summaries, rows, builds = await asyncio.gather(
            templates_svc.list_templates(engine, viewer.ctx),
            snapshots_svc.list_templates(engine, viewer.ctx, None),
            recent_svc.recent_builds(engine, viewer.ctx),
        )
        launchable = _newest_first(list(rows))
    sizes = {t.name: t for t in launchable}
    shown = [s for s in summaries if type_filter == "all" or s.type == type_filter]
    return render(
        request, "templates.html", viewer=viewer, nav="templates", page="templates", title="Templates",
        templates=launchable, shown=shown, sizes=sizes, builds=builds, type_filter=type_filter,
        no_team_hint=NO_TEAM_HINT,
    )  # fmt: skip


@pages.get("/dashboard/templates/{name}")
async def template_page(request: Request, name: str) -> Response:
    viewer = await _team_viewer(request)
    if isinstance(viewer, Response):
        return viewer
    engine = state_of(request).engine
    detail: templates_svc.TemplateDetail | None = None
    builds: list[builds_svc.BuildInfo] = []
    try:
        builds = await builds_svc.list_builds(engine, viewer.ctx, name)  # checks the name
        detail = await templates_svc.get_template(engine, viewer.ctx, name)
    except NotFound:
        pass  # only failed builds so far: the page shows them
    except WarrenError as e:
        return error_page(request, viewer, 404, e.message)
    if detail is None and not builds:
        return error_page(request, viewer, 404, f"template {name!r} not found")
    return render(
        request, "template_detail.html", viewer=viewer, nav="templates", page="template", title=name,
        name=name, detail=detail, builds=builds,
    )  # fmt: skip


@pages.get("/dashboard/templates/{name}/builds/{build_id}")
async def build_page(request: Request, name: str, build_id: str) -> Response:
    viewer = await _team_viewer(request)
    if isinstance(viewer, Response):
        return viewer
    engine = state_of(request).engine
    try:
        build = await builds_svc.get_build(engine, viewer.ctx, name, build_id)
        start = max(0, build.log_bytes - PAGE_LOG_BYTES)
        log = await builds_svc.read_log(engine, viewer.ctx, name, build_id, start, PAGE_LOG_BYTES)
    except WarrenError as e:
        return error_page(request, viewer, 404, e.message)
    note = f"The last {PAGE_LOG_BYTES // (1024 * 1024)} MiB of the log." if start else "The whole log."
    return render(
        request, "template_build.html", viewer=viewer, nav="templates", page="template-build", title=build_id,
        b=build, log=log, log_note=note,
    )  # fmt: skip


@pages.get("/dashboard/templates/{name}/builds/{build_id}/log")
async def build_log(
    request: Request, name: str, build_id: str, offset: Annotated[int, Query(ge=0, le=2**62)] = 0
) -> Response:
    """The log from ``offset`` and the build's state, for the build page's live view."""
    act = await reader_context(request)
    page = await builds_svc.read_log(act.engine, act.ctx, name, build_id, offset, POLL_LOG_BYTES)
    build = await builds_svc.get_build(act.engine, act.ctx, name, build_id)
    return JSONResponse(
        {
            "data": page.data,
            "offset": page.offset,
            "next_offset": page.next_offset,
            "done": page.done,
            "status": build.status,
            "step": build.step,
            "steps": build.steps,
            "cached_steps": build.cached_steps,
        }
    )
