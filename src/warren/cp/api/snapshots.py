"""Snapshot routes (docs/spec.md §2.8, §6, docs/design.md §4). Rules live in
``warren.cp.services.snapshots``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, Store, TeamContext
from warren.cp.api.exec import json_body
from warren.cp.http_errors import error_responses
from warren.cp.services import snapshots as svc

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.post(
    "",
    status_code=201,
    response_model=svc.Template,
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404, 409, 429, 500, 502, 503),
    openapi_extra=json_body(svc.CreateSnapshotBody),
)
async def create_snapshot(
    request: Request,
    ctx: TeamContext,
    db: Db,
    pool: Pool,
    store: Store,
    overwrite: Annotated[bool, Query(description="replace the team's snapshot of that name")] = False,
) -> svc.Template:
    """Snapshot a running or paused sandbox into a template (``name`` defaults to
    ``template-<8 hex>``): its writable layer goes to the template store, so the snapshot starts
    on any host. The sandbox is paused and stays paused. With ``overwrite=true`` an existing
    snapshot of that name is replaced — and kept if anything fails."""
    body, settings = await request.body(), request.app.state.settings
    return await svc.create_snapshot(db, pool, ctx, body, settings=settings, store=store, overwrite=overwrite)


@router.get(
    "",
    response_model=list[svc.Template],
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS),
)
async def list_snapshots(
    ctx: TeamContext, db: Db, type: Annotated[str | None, Query(description="base | snapshot")] = None
) -> list[svc.Template]:
    """The team's templates and all platform templates (``minimal`` included), newest first."""
    return await svc.list_templates(db, ctx, type)


@router.delete("/{name}", status_code=204, responses=error_responses(400, *AUTH_ERRORS, 404, 500, 503))
async def delete_snapshot(name: str, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Delete a snapshot: its record (its layers are garbage-collected once no sandbox uses
    them). A snapshot taken before the template store has its files on its host deleted first
    (any agent error other than "not found" → 500 ``agent_error`` and the snapshot stays)."""
    await svc.delete_snapshot(db, pool, ctx, name)
    return Response(status_code=204)
