"""API key routes (docs/spec.md §2.2): JWT only, scoped to the JWT's team, any role."""

from __future__ import annotations

from fastapi import APIRouter, Response

from warren.cp.api.deps import CurrentUser, Db
from warren.cp.api.models import ApiKey, ApiKeyCreateRequest
from warren.cp.http_errors import error_responses
from warren.cp.services import api_keys as service

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


@router.post(
    "",
    status_code=201,
    response_model=ApiKey,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 429),
)
async def create_api_key(ctx: CurrentUser, engine: Db, body: ApiKeyCreateRequest | None = None) -> ApiKey:
    """Create a key for the JWT's team. The plaintext `key` appears in this response only."""
    return await service.create_key(engine, ctx, body.name if body else None)


@router.get(
    "", response_model=list[ApiKey], response_model_exclude_none=True, responses=error_responses(401, 403)
)
async def list_api_keys(ctx: CurrentUser, engine: Db) -> list[ApiKey]:
    """The JWT team's keys, newest first, with the creator's email."""
    return await service.list_keys(engine, ctx)


@router.delete(
    "/{key_id}", status_code=204, response_class=Response, responses=error_responses(400, 401, 403)
)
async def delete_api_key(key_id: str, ctx: CurrentUser, engine: Db) -> Response:
    """Revoke a key of the JWT's team. 204 also when no such key exists in the team."""
    await service.delete_key(engine, ctx, service.parse_key_id(key_id))
    return Response(status_code=204)
