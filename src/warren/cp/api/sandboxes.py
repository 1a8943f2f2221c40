"""Sandbox lifecycle REST API (SPEC §2.5). Rules live in ``warren.cp.services.sandboxes``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from pydantic import Field

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, Sched, TeamContext
from warren.cp.api.models import INT32_MAX, StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import sandboxes as svc
from warren.cp.services.env import EnvVars

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])




class CreateSandboxRequest(StrictRequest):
    template: str = "minimal"
    # INT columns: values past int32 cannot be stored (<= 0 means the default).
    vcpus: int = Field(default=0, le=INT32_MAX)
    memory_mb: int = Field(default=0, le=INT32_MAX)
    timeout_sec: int = Field(default=0, le=INT32_MAX, description="inactivity timeout in seconds; 0 = none")
    internet: bool = Field(default=True, description="outbound network access")
    env: EnvVars | None = Field(default=None, description="default environment of every process")


_ERR = (*AUTH_ERRORS, 404, 409, 502, 503)


@router.post(
    "",
    status_code=201,
    response_model=svc.Sandbox,
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404, 502, 503),
)
async def create_sandbox(
    ctx: TeamContext, db: Db, pool: Pool, scheduler: Sched, response: Response,
    body: Annotated[CreateSandboxRequest | None, Body()] = None,
) -> svc.Sandbox:  # fmt: skip
    """Create a sandbox on a host chosen by the scheduler. No eligible host → 503.

    ``Server-Timing: agent;dur=<ms>`` tells how long the host agent took (as seen by the CP), so
    the control plane's own share of the latency is measurable from outside."""
    b = body or CreateSandboxRequest()
    params = svc.CreateParams(
        template=b.template, vcpus=b.vcpus, memory_mb=b.memory_mb, timeout_sec=b.timeout_sec,
        internet=b.internet, env=b.env,
    )  # fmt: skip
    timings: dict[str, float] = {}
    sandbox = await svc.create_sandbox(db, pool, scheduler, ctx, params, timings=timings)
    if "agent" in timings:
        response.headers["Server-Timing"] = f"agent;dur={timings['agent']:.1f}"
    return sandbox


@router.get(
    "",
    response_model=list[svc.Sandbox],
    response_model_exclude_none=True,
    responses=error_responses(*AUTH_ERRORS),
)
async def list_sandboxes(ctx: TeamContext, db: Db) -> list[svc.Sandbox]:
    """The team's sandboxes except stopped and errored ones, newest first."""
    return await svc.list_sandboxes(db, ctx)


@router.get(
    "/{sandbox_id}",
    response_model=svc.Sandbox,
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_sandbox(sandbox_id: str, ctx: TeamContext, db: Db) -> svc.Sandbox:
    return await svc.get_sandbox(db, ctx, sandbox_id)


@router.delete("/{sandbox_id}", status_code=204, responses=error_responses(400, *_ERR, 500))
async def destroy_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Destroy. Only NotFound from the agent is ignored; any other agent error is 502 and the
    record stays as it was."""
    await svc.destroy_sandbox(db, pool, ctx, sandbox_id)
    return Response(status_code=204)


@router.post(
    "/{sandbox_id}/pause",
    response_model=svc.Sandbox,
    response_model_exclude_none=True,
    responses=error_responses(400, *_ERR),
)
async def pause_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> svc.Sandbox:
    return await svc.pause_sandbox(db, pool, ctx, sandbox_id)


@router.post(
    "/{sandbox_id}/resume",
    response_model=svc.Sandbox,
    response_model_exclude_none=True,
    responses=error_responses(400, *_ERR),
)
async def resume_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> svc.Sandbox:
    return await svc.resume_sandbox(db, pool, ctx, sandbox_id)


@router.post("/{sandbox_id}/ping", status_code=204, responses=error_responses(400, *_ERR))
async def ping_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Reset the inactivity timer of a running sandbox."""
    await svc.ping_sandbox(db, pool, ctx, sandbox_id)
    return Response(status_code=204)
