"""Sandbox metrics route (docs/spec.md §9.4). Rules live in ``warren.cp.services.metrics``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.http_errors import error_responses
from warren.cp.services import metrics as svc

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


@router.get(
    "/{sandbox_id}/metrics",
    response_model=svc.Metrics,
    responses=error_responses(400, *AUTH_ERRORS, 404, 502, 503),
)
async def get_metrics(
    sandbox_id: str,
    ctx: TeamContext,
    db: Db,
    pool: Pool,
    range: Annotated[str, Query(description="5m | 10m | 1h | 2h | 6h | 12h | 24h")] = "10m",
) -> svc.Metrics:
    """CPU %, memory and disk samples of a running or paused sandbox (404 otherwise)."""
    return await svc.get_metrics(db, pool, ctx, sandbox_id, range)
