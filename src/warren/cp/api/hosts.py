"""Hosts REST API (docs/spec.md §2.9, §3; docs/design.md §4). Rules live in
``warren.cp.services.hosts`` (admin)
and ``warren.cp.services.host_link`` (the agent's register, refresh and heartbeat)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import APIKeyHeader
from pydantic import Field

from warren.byoc_ranges import policy_of
from warren.cp.api.deps import AUTH_ERRORS, CA, CurrentUser, Db, Pool, SettingsDep, Store
from warren.cp.api.models import StrictRequest
from warren.cp.http_errors import error_responses
from warren.cp.security.tokens import verify_host_jwt
from warren.cp.services import host_link, warm_pools
from warren.cp.services import hosts as svc
from warren.cp.services.warm_pool_state import MAX_POOL_SIZE
from warren.cp.state import state_of
from warren.errors import Unauthorized

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])

_host_token_scheme = APIKeyHeader(
    name="X-Host-Token", auto_error=False, description="Host JWT from registration or refresh"
)


async def host_identity(
    request: Request, token: Annotated[str | None, Depends(_host_token_scheme)]
) -> uuid.UUID:
    """The host a request comes from, proven by its host JWT (``X-Host-Token``); 401 otherwise."""
    if not token:
        raise Unauthorized("missing X-Host-Token header")
    return verify_host_jwt(state_of(request).settings.jwt_secret, token)


HostIdentity = Annotated[uuid.UUID, Depends(host_identity)]


@router.post(
    "", status_code=201, response_model=svc.HostWithToken, response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS),
)  # fmt: skip
async def create_host(body: svc.CreateHostRequest, ctx: CurrentUser, db: Db) -> svc.HostWithToken:
    """Create a host (regular: platform admins; byoc: owner/admin of a BYOC team). The one-time
    registration token (valid 1 h) is shown only in this answer."""
    return await svc.create_host(
        db, ctx, type=body.type, team_id=body.team_id, provider=body.provider,
        availability_zone=body.availability_zone,
    )  # fmt: skip


@router.get(
    "",
    response_model=list[svc.Host],
    response_model_exclude_none=True,
    responses=error_responses(*AUTH_ERRORS),
)
async def list_hosts(ctx: CurrentUser, db: Db) -> list[svc.Host]:
    return await svc.list_hosts(db, ctx)


@router.post(
    "/register", status_code=201, response_model=svc.HostCredentials, response_model_exclude_none=True,
    responses=error_responses(400, 401, 404),
)  # fmt: skip
async def register(
    body: host_link.RegisterRequest, db: Db, ca: CA, settings: SettingsDep
) -> svc.HostCredentials:
    """Agent registration with a one-time token (docs/spec.md §3.1): returns the host JWT (7 d), a
    refresh token (60 d) and the host's mTLS server certificate, key and the CA certificate."""
    return await host_link.register(
        db, ca, settings.jwt_secret, body, byoc_allowed=policy_of(settings.byoc_allowed_cidrs)
    )


@router.post(
    "/auth/refresh",
    response_model=svc.HostCredentials,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 404),
)
async def refresh(
    body: host_link.RefreshRequest, db: Db, ca: CA, settings: SettingsDep
) -> svc.HostCredentials:
    """Rotate a host's credentials (issue-then-revoke). A bad or expired token is 401."""
    return await host_link.refresh(db, ca, settings.jwt_secret, body.refresh_token)


@router.post("/{host_id}/heartbeat", status_code=204, responses=error_responses(400, 401, 403, 404, 429))
async def heartbeat(
    host_id: str, host: HostIdentity, db: Db, pool: Pool, store: Store,
    report: host_link.HostReport | None = None,
) -> Response:  # fmt: skip
    """A host's liveness signal, with what it reports of itself (`HostReport`, optional)."""
    await host_link.heartbeat(db, host, host_id, report)
    if report is not None and report.warm_pools is not None:
        reported = [p.model_dump() for p in report.warm_pools]
        await warm_pools.reapply_after_heartbeat(db, pool, store, host, reported)
    return Response(status_code=204)


@router.get(
    "/{host_id}",
    response_model=svc.Host,
    response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_host(host_id: str, ctx: CurrentUser, db: Db) -> svc.Host:
    return await svc.get_host(db, ctx, host_id)


@router.get(
    "/{host_id}/delete-preview", response_model=svc.DeletePreview, response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)  # fmt: skip
async def delete_preview(host_id: str, ctx: CurrentUser, db: Db) -> svc.DeletePreview:
    """The sandboxes a delete would affect (pending/starting/running/missing). No side effects."""
    return await svc.delete_preview(db, ctx, host_id)


@router.delete("/{host_id}", status_code=204, responses=error_responses(400, *AUTH_ERRORS, 404, 409))
async def delete_host(
    host_id: str, ctx: CurrentUser, db: Db, pool: Pool, force: Annotated[bool, Query()] = False
) -> Response:
    """Delete a host. With active sandboxes: 409 ``has_active_sandboxes`` listing them, unless
    ``?force=true``, which destroys them, terminates the agent and revokes its credentials."""
    await svc.delete_host(db, pool, ctx, host_id, force=force)
    return Response(status_code=204)


@router.post(
    "/{host_id}/token", status_code=201, response_model=svc.HostWithToken, response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404, 409),
)  # fmt: skip
async def regenerate_token(host_id: str, ctx: CurrentUser, db: Db) -> svc.HostWithToken:
    """A new registration token for a host that is still ``pending`` (else 409 ``invalid_state``)."""
    return await svc.regenerate_token(db, ctx, host_id)


class WarmPoolSize(StrictRequest):
    size: int = Field(description=f"ready sandboxes to keep, 0-{MAX_POOL_SIZE} (0 stops the pool)")


@router.put(
    "/{host_id}/warm-pools/{template}", response_model=svc.Host, response_model_exclude_none=True,
    responses=error_responses(400, *AUTH_ERRORS, 404, 502, 503),
)  # fmt: skip
async def set_warm_pool(
    host_id: str, template: str, body: WarmPoolSize, ctx: CurrentUser, db: Db, pool: Pool, store: Store
) -> svc.Host:
    """Keep ``size`` ready sandboxes of ``template`` on the host (platform admins for any host,
    owners and admins of a BYOC team for its hosts). The size outlives an agent restart."""
    return await warm_pools.set_pool(db, pool, store, ctx, host_id, template, body.size)


@router.get("/{host_id}/tags", response_model=list[str], responses=error_responses(400, *AUTH_ERRORS, 404))
async def list_tags(host_id: str, ctx: CurrentUser, db: Db) -> list[str]:
    return await svc.list_tags(db, ctx, host_id)


@router.post("/{host_id}/tags", status_code=204, responses=error_responses(400, *AUTH_ERRORS, 404))
async def add_tag(host_id: str, body: svc.TagRequest, ctx: CurrentUser, db: Db) -> Response:
    await svc.add_tag(db, ctx, host_id, body.tag)
    return Response(status_code=204)


@router.delete("/{host_id}/tags/{tag}", status_code=204, responses=error_responses(400, *AUTH_ERRORS, 404))
async def remove_tag(host_id: str, tag: str, ctx: CurrentUser, db: Db) -> Response:
    await svc.remove_tag(db, ctx, host_id, tag)
    return Response(status_code=204)
