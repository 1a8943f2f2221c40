"""Signed file URLs (docs/networking.md §6): ``GET …/files/download-url`` and
``…/files/upload-url`` (authenticated) make them; ``…/files/signed/download`` and
``…/files/signed/upload`` serve them without an API key. Rules in
``warren.cp.services.file_urls``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.http_errors import error_responses
from warren.cp.services import file_urls as svc

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])

_ERR = error_responses(400, *AUTH_ERRORS, 403, 404, 409)
_SIGNED_ERR = error_responses(400, 403, 404, 409, 413, 502, 503)
_OCTETS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}
Path = Query(description="absolute, or relative to the user's home", max_length=svc.MAX_PATH)
Expires = Query(default=svc.DEFAULT_EXPIRES_S, description=f"seconds, 1..{svc.MAX_EXPIRES_S}")
User = Query(default="", description="as this user of the sandbox; empty: the template's user")


def _secret(request: Request) -> str:
    return str(request.app.state.settings.require_jwt_secret())


@router.get("/download-url", response_model=svc.SignedUrl, responses=_ERR)
async def download_url(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db,
    path: str = Path, expires: int = Expires, user: str = User,
) -> svc.SignedUrl:  # fmt: skip
    """A URL that downloads this file (GET) without an API key until ``expires_at``."""
    return await svc.make(db, ctx, sandbox_id, "download", path, user, expires,
                          secret=_secret(request), base_url=str(request.base_url))  # fmt: skip


@router.get("/upload-url", response_model=svc.SignedUrl, responses=_ERR)
async def upload_url(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db,
    path: str = Path, expires: int = Expires, user: str = User,
) -> svc.SignedUrl:  # fmt: skip
    """A URL that writes this file (PUT or POST, the raw bytes as the body) without an API key
    until ``expires_at``."""
    return await svc.make(db, ctx, sandbox_id, "upload", path, user, expires,
                          secret=_secret(request), base_url=str(request.base_url))  # fmt: skip


def _q() -> Any:
    # One Query per parameter: FastAPI records each parameter's name on its FieldInfo.
    return Query(default="", max_length=svc.MAX_PATH)


@router.get("/signed/download", response_class=Response, responses={**_OCTETS, **_SIGNED_ERR})
async def signed_download(
    sandbox_id: str, request: Request, db: Db, pool: Pool,
    path: str = _q(), user: str = _q(), team: str = _q(), exp: str = _q(), sig: str = _q(),
) -> Response:  # fmt: skip
    """A signed download URL: the file's bytes, streamed. 403 for a bad signature or an
    expired URL."""
    grant = await svc.verify(db, "download", sandbox_id, path, user, team, exp, sig, secret=_secret(request))
    streams = int(request.app.state.settings.max_streams_per_team)
    body = await svc.download(db, pool, grant, max_streams=streams)
    return StreamingResponse(body, media_type="application/octet-stream")


@router.put("/signed/upload", status_code=204, responses=_SIGNED_ERR)
async def signed_upload(
    sandbox_id: str, request: Request, db: Db, pool: Pool,
    path: str = _q(), user: str = _q(), team: str = _q(), exp: str = _q(), sig: str = _q(),
) -> Response:  # fmt: skip
    """A signed upload URL: the request body (raw bytes, any size, streamed) replaces the file.
    403 for a bad signature or an expired URL."""
    grant = await svc.verify(db, "upload", sandbox_id, path, user, team, exp, sig, secret=_secret(request))
    streams = int(request.app.state.settings.max_streams_per_team)
    await svc.upload(db, pool, grant, request.stream(), max_streams=streams)
    return Response(status_code=204)


@router.post("/signed/upload", status_code=204, responses=_SIGNED_ERR)
async def signed_upload_post(
    sandbox_id: str, request: Request, db: Db, pool: Pool,
    path: str = _q(), user: str = _q(), team: str = _q(), exp: str = _q(), sig: str = _q(),
) -> Response:  # fmt: skip
    """As ``PUT`` (for clients that can only POST)."""
    return await signed_upload(sandbox_id, request, db, pool, path, user, team, exp, sig)
