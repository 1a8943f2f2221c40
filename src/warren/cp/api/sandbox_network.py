"""A sandbox's egress rules: ``GET`` and ``PATCH /v1/sandboxes/{id}/network`` (issue 14,
docs/networking.md §5). Rules live in ``warren.cp.services.sandbox_network``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.api.models import StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import sandbox_network as svc
from warren.cp.services.egress_rules import NetworkRules
from warren.egress_rules import MAX_RULES

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


class NetworkPatch(StrictRequest):
    allow_out: list[str] | None = Field(
        default=None, max_length=MAX_RULES, description="replaces allow_out; left out: kept"
    )
    deny_out: list[str] | None = Field(
        default=None, max_length=MAX_RULES, description="replaces deny_out; left out: kept"
    )


@router.get(
    "/{sandbox_id}/network", response_model=NetworkRules, responses=error_responses(400, *AUTH_ERRORS, 404)
)
async def get_network(sandbox_id: str, ctx: TeamContext, db: Db) -> NetworkRules:
    """The sandbox's egress rules."""
    return await svc.get_network(db, ctx, sandbox_id)


@router.patch(
    "/{sandbox_id}/network",
    response_model=NetworkRules,
    responses=error_responses(400, *AUTH_ERRORS, 404, 409, 502, 503),
)
async def patch_network(
    sandbox_id: str, body: NetworkPatch, ctx: TeamContext, db: Db, pool: Pool
) -> NetworkRules:
    """Change a running or paused sandbox's egress rules; they apply to its new connections at
    once. A bad entry → 400 naming it; a sandbox with internet=false → 409."""
    return await svc.update_network(db, pool, ctx, sandbox_id, body.allow_out, body.deny_out)
