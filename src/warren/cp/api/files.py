"""File routes (docs/spec.md §2.7, docs/design.md §4). Rules and streaming live in
``warren.cp.services.files``;
an upload's multipart form is read here (``warren.cp.multipart``), so the service gets a
path and the file's bytes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from warren.cp import multipart
from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.api.exec import json_body
from warren.cp.http_errors import error_responses
from warren.cp.services import files as svc

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])


_ERR = error_responses(400, *AUTH_ERRORS, 403, 404, 409, 413, 502, 503)
_UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["path", "file"],
                    "properties": {
                        "path": {
                            "type": "string",
                            "description": "absolute path in the sandbox, or relative to the user's home",
                        },
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}
# An upload's form carries its path and file; the user it is written as is a query parameter.
UploadUser = Query(
    default="",
    description="write as this user of the sandbox (owner of the file; relative paths are under "
    "their home); empty: the template's user",
)
_OCTETS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.post("/write", status_code=204, responses=_ERR,
             openapi_extra=_UPLOAD)  # fmt: skip
async def write_file(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool, user: str = UploadUser
) -> Response:
    """Upload a file of up to 100 MiB (``WARREN_MAX_UPLOAD_BYTES``; 413 above; the cap is the
    file's, not the form's). Parent directories are created and an existing file is replaced,
    only once the whole file has arrived. A read-only or forbidden path is 403."""
    tgt = await svc.upload_target(db, pool, ctx, sandbox_id, user, max_streams=_streams(request))
    cap = _cap(request)
    form = multipart.UnaryForm(request.headers.get("content-type", ""), request.stream(), cap)
    path = await form.until_file_or_end()
    if path is not None:
        # Streamed: whatever follows the file (more fields, framing) is read and checked too.
        await svc.write_unary(tgt, path, form.file_bytes(), cap=cap)
    else:
        # The file came before its path: held until the rest of the form names the path.
        await svc.write_unary_held(tgt, form.file_bytes(), lambda: form.path, cap=cap)
    return Response(status_code=204)


def _cap(request: Request) -> int:
    return int(request.app.state.settings.max_upload_bytes)


def _streams(request: Request) -> int:
    """Downloads hold one of the team's stream slots (services/files.py)."""
    return int(request.app.state.settings.max_streams_per_team)


@router.post("/read", response_class=Response, responses={**_OCTETS, **_ERR, **error_responses(413)},
             openapi_extra=json_body(svc.PathBody))  # fmt: skip
async def read_file(sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    """The raw bytes of a file of up to 100 MiB (413 above; a symlink's target counts). A
    missing file is 404. Sent chunked: ``/proc`` files and files that grow are read whole."""
    raw = await request.body()
    body = await svc.read_unary(
        db, pool, ctx, sandbox_id, raw, cap=_cap(request), max_streams=_streams(request)
    )
    return StreamingResponse(body, media_type="application/octet-stream")


@router.post("/stream/write", status_code=204, responses=_ERR, openapi_extra=_UPLOAD)
async def write_file_stream(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool, user: str = UploadUser
) -> Response:
    """Upload any size, streamed to the sandbox in 64 KiB chunks. The ``path`` field must come
    before the ``file`` part (400 otherwise)."""
    tgt = await svc.upload_target(db, pool, ctx, sandbox_id, user, max_streams=_streams(request))
    path, file_bytes = await multipart.stream_form(request.headers.get("content-type", ""), request.stream())
    await svc.write_stream(tgt, path, file_bytes)
    return Response(status_code=204)


@router.post("/stream/read", response_class=Response, responses={**_OCTETS, **_ERR},
             openapi_extra=json_body(svc.PathBody))  # fmt: skip
async def read_file_stream(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> Response:
    """Download any size, chunked. A missing file is 404 before any byte is sent; a transfer
    that fails midway is cut off (the chunked body never ends properly), never silently short."""
    body = await svc.open_read(db, pool, ctx, sandbox_id, await request.body(), max_streams=_streams(request))
    return StreamingResponse(body, media_type="application/octet-stream")


_PAGE_HEADERS = {
    "X-Has-More": {"description": "`true` when more entries follow", "schema": {"type": "string"}},
    "X-Next-Cursor": {
        "description": "the next page's `cursor` (with X-Has-More)",
        "schema": {"type": "string"},
    },
}


@router.post("/list", response_model=list[svc.EntryInfo], response_model_exclude_none=True,
             responses={**_ERR, 200: {"headers": _PAGE_HEADERS}},
             openapi_extra=json_body(svc.ListBody))  # fmt: skip
async def list_dir(
    sandbox_id: str, request: Request, response: Response, ctx: TeamContext, db: Db, pool: Pool
) -> list[svc.EntryInfo]:
    """One page of a directory's entries, sorted by path; ``depth`` > 1 descends into
    subdirectories. A page holds ``limit`` entries (default 1000, at most 10000) and about
    1 MiB at most: when more follow, ``X-Has-More: true`` and ``X-Next-Cursor`` (pass it as
    ``cursor`` for the next page)."""
    page = await svc.list_dir(db, pool, ctx, sandbox_id, await request.body())
    response.headers["X-Has-More"] = "true" if page.has_more else "false"
    if page.has_more:
        response.headers["X-Next-Cursor"] = page.next_cursor
    return page.entries


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
