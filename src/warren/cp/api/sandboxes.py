"""Sandbox lifecycle REST API (docs/spec.md §2.5). Rules live in ``warren.cp.services.sandboxes``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, Field

from warren.config import Runtime
from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, State, TeamContext
from warren.cp.api.models import INT32_MAX, StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import egress_rules, envd_rotation, sandbox_power
from warren.cp.services import sandboxes as svc
from warren.cp.services.egress_rules import NetworkRules
from warren.cp.services.env import EnvVars
from warren.cp.state import state_of

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


class CreateSandboxRequest(StrictRequest):
    template: str = "minimal"
    # INT columns: values past int32 cannot be stored. 0 means the default; above the platform
    # maximum is a 400 (services/limits.py).
    vcpus: int = Field(default=0, le=INT32_MAX, description="0 = 1")
    memory_mb: int = Field(default=0, le=INT32_MAX, description="0 = 512")
    disk_size_mb: int = Field(
        default=0, le=INT32_MAX,
        description="writable disk, MiB (a tmpfs inside the memory limit; the sandbox reports the real "
        "size); 0 = 5120",
    )  # fmt: skip
    timeout_sec: int = Field(
        default=0, le=INT32_MAX,
        description="inactivity timeout in seconds (idle that long: paused); 0 = the platform maximum",
    )  # fmt: skip
    internet: bool = Field(default=True, description="outbound network access")
    env: EnvVars | None = Field(default=None, description="default environment of every process")
    network: NetworkRules | None = Field(
        default=None, description="egress rules: allow_out entries are exceptions to deny_out"
    )
    runtime: Runtime | None = Field(
        default=None,
        description="the runtime tier: runc or crun (the host's kernel, behind seccomp) or gvisor "
        "(gVisor's user-space kernel; pause to disk, memory snapshots); absent = the platform "
        "default (WARREN_DEFAULT_RUNTIME); a memory snapshot starts on gvisor",
    )


_ERR = (*AUTH_ERRORS, 404, 409, 502, 503)


@router.post(
    "",
    status_code=201,
    response_model=svc.SandboxView,
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404, 429, 502, 503),
)
async def create_sandbox(
    ctx: TeamContext, request: Request, body: Annotated[CreateSandboxRequest | None, Body()] = None
) -> Response:
    """Create a sandbox on a host chosen by the scheduler. A size past a platform maximum → 400;
    past a team quota → 429 `quota_exceeded`; no eligible host (none offering the runtime) → 503
    `no_hosts_available`; no host with room → 503 `no_capacity`.

    ``Server-Timing: agent;dur=<ms>`` tells how long the host agent took (as seen by the CP), so
    the control plane's own share of the latency is measurable from outside."""
    b = body or CreateSandboxRequest()
    params = svc.CreateParams(
        template=b.template, vcpus=b.vcpus, memory_mb=b.memory_mb, disk_size_mb=b.disk_size_mb,
        timeout_sec=b.timeout_sec, internet=b.internet, env=b.env,
        network=egress_rules.checked(b.network, internet=b.internet), runtime=b.runtime,
    )  # fmt: skip
    timings: dict[str, float] = {}
    # The app's state read from the request, not dependencies (each costs a resolution).
    state = state_of(request)
    created = await svc.create(
        state.engine, state.pool, state.scheduler, ctx, params,
        settings=state.settings, store=state.store, timings=timings,
    )  # fmt: skip
    # The answer dumped once (response_model documents it; FastAPI would validate and dump the
    # returned model again).
    response = Response(created.json(), 201, media_type="application/json")
    if "agent" in timings:
        response.headers["Server-Timing"] = f"agent;dur={timings['agent']:.1f}"
    return response


@router.get(
    "",
    response_model=list[svc.SandboxView],
    response_model_exclude_none=True,
    responses=error_responses(*AUTH_ERRORS),
)
async def list_sandboxes(ctx: TeamContext, db: Db) -> list[svc.SandboxView]:
    """The team's sandboxes except stopped and errored ones, newest first."""
    return await svc.list_sandboxes(db, ctx)


@router.get(
    "/{sandbox_id}",
    response_model=svc.SandboxView,
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_sandbox(sandbox_id: str, ctx: TeamContext, db: Db) -> svc.SandboxView:
    return await svc.get_sandbox(db, ctx, sandbox_id)


@router.delete("/{sandbox_id}", status_code=204, responses=error_responses(400, *_ERR, 500))
async def destroy_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Destroy. Only NotFound from the agent is ignored; any other agent error is 502 and the
    record stays as it was."""
    await svc.destroy_sandbox(db, pool, ctx, sandbox_id)
    return Response(status_code=204)


@router.post(
    "/{sandbox_id}/pause",
    response_model=svc.SandboxView,
    response_model_exclude_none=True,
    responses=error_responses(400, *_ERR),
)
async def pause_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> svc.SandboxView:
    return await sandbox_power.pause_sandbox(db, pool, ctx, sandbox_id)


@router.post(
    "/{sandbox_id}/resume",
    response_model=svc.SandboxView,
    response_model_exclude_none=True,
    responses=error_responses(400, *_ERR),
)
async def resume_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> svc.SandboxView:
    return await sandbox_power.resume_sandbox(db, pool, ctx, sandbox_id)


@router.post("/{sandbox_id}/ping", status_code=204, responses=error_responses(400, *_ERR))
async def ping_sandbox(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Reset the inactivity timer of a running sandbox."""
    await sandbox_power.ping_sandbox(db, pool, ctx, sandbox_id)
    return Response(status_code=204)


class AccessToken(BaseModel):
    sandbox_id: str
    access_token: str = Field(description="the new E2B envd access token (X-Access-Token)")


@router.post("/{sandbox_id}/access-token", response_model=AccessToken, responses=error_responses(400, *_ERR))
async def rotate_access_token(sandbox_id: str, ctx: TeamContext, db: Db, state: State) -> AccessToken:
    """Rotate the sandbox's E2B envd access token: the old one, and every URL signed with it,
    stop working at once (docs/e2b.md §3). The answer carries the new token."""
    r = await envd_rotation.rotate(db, ctx, sandbox_id, secret=state.settings.jwt_secret)
    return AccessToken(sandbox_id=r.sandbox_id, access_token=r.access_token)
