"""File routes (SPEC §2.7, DESIGN §4). Rules and streaming live in ``warren.cp.services.files``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.api.exec import json_body
from warren.cp.http_errors import error_responses
from warren.cp.services import files as svc

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])


_ERR = error_responses(400, *AUTH_ERRORS, 404, 409, 502, 503)
_UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["path", "file"],
                    "properties": {
                        "path": {"type": "string", "description": "absolute path in the sandbox"},
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}
_OCTETS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.post("/write", status_code=204, responses=error_responses(400, *AUTH_ERRORS, 404, 409, 413, 502, 503),
             openapi_extra=_UPLOAD)  # fmt: skip
async def write_file(sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Upload a file of up to 100 MiB (413 above). Parent directories are created and an
    existing file is replaced."""
    await svc.write_unary(
        db, pool, ctx, sandbox_id, request.headers.get("content-type", ""), request.stream()
    )
    return Response(status_code=204)


@router.post("/read", response_class=Response, responses={**_OCTETS, **_ERR, **error_responses(413)},
             openapi_extra=json_body(svc.PathBody))  # fmt: skip
async def read_file(sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """The raw bytes of a file of up to 100 MiB (413 above). A missing file is 404."""
    size, body = await svc.read_unary(db, pool, ctx, sandbox_id, await request.body())
    return StreamingResponse(
        body, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


@router.post("/stream/write", status_code=204, responses=_ERR, openapi_extra=_UPLOAD)
async def write_file_stream(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> Response:
    """Upload any size, streamed to the sandbox in 64 KiB chunks. The ``path`` field must come
    before the ``file`` part (400 otherwise)."""
    await svc.write_stream(
        db, pool, ctx, sandbox_id, request.headers.get("content-type", ""), request.stream()
    )
    return Response(status_code=204)


@router.post("/stream/read", response_class=Response, responses={**_OCTETS, **_ERR},
             openapi_extra=json_body(svc.PathBody))  # fmt: skip
async def read_file_stream(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> Response:
    """Download any size, chunked. A missing file is 404 before any byte is sent; a transfer
    that fails midway is cut off (the chunked body never ends properly), never silently short."""
    body = await svc.open_read(db, pool, ctx, sandbox_id, await request.body())
    return StreamingResponse(body, media_type="application/octet-stream")


@router.post("/list", response_model=list[svc.EntryInfo], response_model_exclude_none=True, responses=_ERR,
             openapi_extra=json_body(svc.ListBody))  # fmt: skip
async def list_dir(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> list[svc.EntryInfo]:
    """Entries of a directory; ``depth`` > 1 descends into subdirectories."""
    return await svc.list_dir(db, pool, ctx, sandbox_id, await request.body())


@router.post("/stat", response_model=svc.EntryInfo, response_model_exclude_none=True, responses=_ERR,
             openapi_extra=json_body(svc.PathBody))  # fmt: skip
async def stat(sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool) -> svc.EntryInfo:
    return await svc.stat(db, pool, ctx, sandbox_id, await request.body())


@router.post(
    "/mkdir", response_model=svc.MakeDirResult, responses=_ERR, openapi_extra=json_body(svc.PathBody)
)
async def make_dir(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> svc.MakeDirResult:
    """Create a directory and its parents; ``created`` is false when it already existed."""
    return await svc.make_dir(db, pool, ctx, sandbox_id, await request.body())


@router.post("/remove", status_code=204, responses=_ERR, openapi_extra=json_body(svc.PathBody))
async def remove(sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """Remove a file or a directory tree."""
    await svc.remove(db, pool, ctx, sandbox_id, await request.body())
    return Response(status_code=204)


@router.post("/move", response_model=svc.EntryInfo, response_model_exclude_none=True, responses=_ERR,
             openapi_extra=json_body(svc.MoveBody))  # fmt: skip
async def move(sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool) -> svc.EntryInfo:
    """Rename or move; answers the entry at its new place."""
    return await svc.move(db, pool, ctx, sandbox_id, await request.body())
