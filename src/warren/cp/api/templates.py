"""Template routes (docs/templates.md §4, docs/api.md "Templates"): builds and their logs, image
import, the listing, one template's versions, and delete. Rules live in
``warren.cp.services.templates``, ``template_builds`` and ``template_import``.

The two upload routes read their bodies themselves (the app's body cap skips them): a build's
JSON body is capped like any JSON body, its multipart context and an import's image are
streamed to a temporary file under their own caps, never held in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from warren.cp.api.deps import AUTH_ERRORS, Db, SettingsDep, Store, TeamContext
from warren.cp.api.disconnect import CLIENT_GONE, until_disconnected
from warren.cp.http_errors import error_responses
from warren.cp.multipart import Field_, FileData, FileStart, MultipartStream, PartEnd
from warren.cp.services import build_spool
from warren.cp.services import template_builds as builds
from warren.cp.services import template_import as imports
from warren.cp.services import templates as svc
from warren.cp.services.exec import parse_body
from warren.cp.services.template_build_log import MAX_READ, LogPage
from warren.cp.services.template_builds import BuildRequest
from warren.cp.services.template_context import receive
from warren.cp.services.template_spec import MAX_SPEC_BYTES, parse
from warren.cp.state import state_of
from warren.errors import InvalidRequest, PayloadTooLarge

router = APIRouter(prefix="/v1/templates", tags=["templates"])

MiB = 1024 * 1024
MAX_FORM_FIELDS = 8


async def get_runner(request: Request) -> builds.BuildRunner:
    return state_of(request).builds


Runner = Annotated[builds.BuildRunner, Depends(get_runner)]
Check = Callable[[dict[str, str]], Awaitable[None]]


def _multipart_body(fields: dict[str, str], file_field: str) -> dict[str, Any]:
    props: dict[str, Any] = {k: {"type": "string", "description": v} for k, v in fields.items()}
    props[file_field] = {"type": "string", "format": "binary"}
    return {"multipart/form-data": {"schema": {"type": "object", "properties": props}}}


_BUILD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BuildRequest.model_json_schema()},
            **_multipart_body(
                {
                    "name": "template name",
                    "spec": "the Warrenfile",
                    "tags": 'JSON list, e.g. ["stable"] (or comma-separated)',
                    "build_args": "JSON object of ARG values",
                },
                "context",
            ),
        },
    }
}
_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": _multipart_body(
            {"name": "template name", "tags": "JSON list (or comma-separated)"}, "image"
        ),
    }
}


async def _json_body(request: Request, cap: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLarge(f"request body exceeds {cap} bytes")
    return bytes(body)


async def _form(
    request: Request, file_field: str, spool: Path, max_bytes: int, before_file: Check
) -> tuple[dict[str, str], tuple[Path, str] | None]:
    """The text fields and the one file part (streamed to a temp file: its path and sha256).
    ``before_file`` judges the fields sent before the file, so a request that will be refused
    is refused before its upload is read."""
    parser = MultipartStream(request.headers.get("content-type", ""), max_field_bytes=MAX_SPEC_BYTES + 1)
    fields: dict[str, str] = {}
    saved: tuple[Path, str] | None = None

    async def events() -> AsyncIterator[Any]:
        # The whole body is bounded (the file's cap and the form around it), and read no further
        # than its last boundary: the upload's file is written, and kept, for no longer than
        # that takes at the HTTP front's minimum pace (services/build_spool.py sweeps on that).
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + build_spool.FORM_ENVELOPE:
                raise PayloadTooLarge(f"the upload is larger than {max_bytes // MiB} MiB")
            for ev in parser.feed(chunk):
                yield ev
            if parser.finished:
                return

    stream = events()

    async def file_bytes() -> AsyncIterator[bytes]:
        async for ev in stream:
            if isinstance(ev, FileData):
                yield ev.data
            elif isinstance(ev, PartEnd):
                return
        raise InvalidRequest("the upload ended before the file part was complete")

    try:
        async for ev in stream:
            if isinstance(ev, Field_):
                if len(fields) >= MAX_FORM_FIELDS:
                    raise InvalidRequest("too many form fields")
                fields[ev.name] = ev.value
            elif isinstance(ev, FileStart):
                if ev.name != file_field or saved is not None:
                    raise InvalidRequest(
                        f"unexpected file part {ev.name!r}; the file field is {file_field!r}"
                    )
                await before_file(fields)
                path, meta = await receive(file_bytes(), spool, max_bytes)
                saved = (path, meta.digest)
        if not parser.finished:
            raise InvalidRequest("incomplete multipart body")
    except BaseException:
        if saved is not None:
            saved[0].unlink(missing_ok=True)
        raise
    return fields, saved


async def _check_build_fields(fields: dict[str, str]) -> None:
    body = builds.parse_form(fields)
    svc.check_name(body.name)
    svc.check_tags(body.tags)
    parse(body.spec, body.build_args)


def _import_fields(fields: dict[str, str]) -> None:
    unknown = set(fields) - {"name", "tags"}
    if unknown:
        raise InvalidRequest(f"unknown field: {sorted(unknown)[0]}")


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@router.post(
    "",
    status_code=202,
    response_model=builds.BuildInfo,
    responses=error_responses(400, *AUTH_ERRORS, 404, 409, 413, 429),
    openapi_extra=_BUILD_BODY,
)
async def build_template(
    request: Request, ctx: TeamContext, db: Db, settings: SettingsDep, runner: Runner
) -> builds.BuildInfo:
    """Start a build of a template version from a Warrenfile (JSON ``{name, spec, tags?,
    build_args?}``, or multipart with the fields and a ``context`` tar for COPY). 202 with the
    build; follow it with ``…/builds/{build_id}`` and its log. A spec that does not parse: 400
    naming the line; a platform template's or a snapshot's name: 409; the team's concurrent
    builds at their bound: 429 ``too_many_builds``; a context past ``WARREN_BUILD_MAX_CONTEXT_MB``: 413."""
    if not _is_multipart(request):
        body = parse_body(BuildRequest, await _json_body(request, settings.max_json_body))
        return await builds.submit(db, runner, ctx, body, None)
    async with builds.upload_admitted(ctx, settings):
        spool = build_spool.spool_dir(settings)
        fields, context = await _form(
            request, "context", spool, settings.build_max_context_mb * MiB, _check_build_fields
        )
        try:
            body = builds.parse_form(fields)
        except BaseException:
            if context is not None:
                context[0].unlink(missing_ok=True)
            raise
        return await builds.submit(db, runner, ctx, body, context)


@router.post(
    "/import",
    status_code=201,
    response_model=svc.TemplateVersion,
    responses=error_responses(400, *AUTH_ERRORS, 409, 413, 429),
    openapi_extra=_IMPORT_BODY,
)
async def import_template(
    request: Request, ctx: TeamContext, db: Db, settings: SettingsDep, store: Store
) -> svc.TemplateVersion | Response:
    """Import an OCI image layout tarball or a ``docker save`` tarball (multipart: ``name``,
    ``tags``, file ``image``) as the next version of a template. An image without
    ``/usr/bin/python3``: 400 ``python3_missing``; past ``WARREN_IMPORT_MAX_IMAGE_MB``: 413; the
    team's imports in progress at ``WARREN_IMPORT_MAX_PER_TEAM``: 429 ``too_many_imports``. A
    client that disconnects stops the import."""
    if not _is_multipart(request):
        raise InvalidRequest("expected multipart/form-data with the fields name, tags and the file image")
    async with imports.admitted(ctx, settings):
        return await _import(request, ctx, db, settings, store)


async def _import(
    request: Request, ctx: TeamContext, db: Db, settings: SettingsDep, store: Store
) -> svc.TemplateVersion | Response:
    spool = build_spool.spool_dir(settings)

    async def check(fields: dict[str, str]) -> None:
        _import_fields(fields)
        await imports.check_target(db, ctx, fields.get("name", ""), builds.tags_field(fields.get("tags", "")))

    fields, image = await _form(request, "image", spool, settings.import_max_image_mb * MiB, check)
    try:
        if image is None:
            raise InvalidRequest("the file part image is required")
        _import_fields(fields)
        tags = builds.tags_field(fields.get("tags", ""))
        work = imports.import_image(db, store, settings, ctx, fields.get("name", ""), tags, image[0])
        # A client that leaves stops the read: an image is seconds of a tenant thread to read.
        version = await until_disconnected(request, work)
        if version is None:
            return Response(status_code=CLIENT_GONE)  # nobody is listening any more
        return version
    finally:
        if image is not None:
            image[0].unlink(missing_ok=True)


@router.get("", response_model=list[svc.TemplateSummary], responses=error_responses(*AUTH_ERRORS))
async def list_templates(ctx: TeamContext, db: Db) -> list[svc.TemplateSummary]:
    """The team's templates and the platform's: each one's newest version, with every tag."""
    return await svc.list_templates(db, ctx)


@router.get("/{name}", response_model=svc.TemplateDetail, responses=error_responses(400, *AUTH_ERRORS, 404))
async def get_template(name: str, ctx: TeamContext, db: Db) -> svc.TemplateDetail:
    """A template's versions, newest first."""
    return await svc.get_template(db, ctx, name)


@router.delete("/{name}", status_code=204, responses=error_responses(400, *AUTH_ERRORS, 403, 404, 409))
async def delete_template(
    name: str,
    ctx: TeamContext,
    db: Db,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="one version only")] = None,
) -> Response:
    """Delete every version of the team's template (or ``?version=N``). Sandboxes running from
    it keep running. A platform template: 403; a snapshot: 409 (``DELETE /v1/snapshots/{name}``)."""
    await svc.delete_template(db, ctx, name, version)
    return Response(status_code=204)


@router.get(
    "/{name}/builds", response_model=list[builds.BuildInfo], responses=error_responses(400, *AUTH_ERRORS)
)
async def list_builds(name: str, ctx: TeamContext, db: Db) -> list[builds.BuildInfo]:
    """The team's last 50 builds of ``name``, newest first (failed ones too)."""
    return await builds.list_builds(db, ctx, name)


@router.get(
    "/{name}/builds/{build_id}",
    response_model=builds.BuildInfo,
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def get_build(name: str, build_id: str, ctx: TeamContext, db: Db) -> builds.BuildInfo:
    """A build's status: step, cached steps, and on failure the failed step, exit code and error."""
    return await builds.get_build(db, ctx, name, build_id)


@router.post(
    "/{name}/builds/{build_id}/cancel",
    response_model=builds.BuildInfo,
    responses=error_responses(400, *AUTH_ERRORS, 404, 409),
)
async def cancel_build(
    name: str, build_id: str, ctx: TeamContext, db: Db, runner: Runner
) -> builds.BuildInfo:
    """Cancel a queued or running build: it ends ``failed`` with the error "cancelled by the
    team" once its running step has stopped, which frees its slot (a build running on another
    replica is answered still ``running`` with that error: it stops within seconds). A build
    that has ended already: 409 ``build_finished``."""
    return await builds.cancel_build(db, runner, ctx, name, build_id)


@router.get(
    "/{name}/builds/{build_id}/log",
    responses=error_responses(400, *AUTH_ERRORS, 404),
)
async def read_build_log(
    name: str,
    build_id: str,
    ctx: TeamContext,
    db: Db,
    offset: Annotated[int, Query(ge=0, le=2**62, description="byte offset to read from")] = 0,
    limit: Annotated[
        int | None, Query(ge=1, le=MAX_READ, description="bytes at most (default 1 MiB)")
    ] = None,
) -> dict[str, Any]:
    """The log from byte ``offset``: ``{data, offset, next_offset, done, status}``. Read again
    from ``next_offset``; ``done`` once the build has ended and nothing follows."""
    page: LogPage = await builds.read_log(db, ctx, name, build_id, offset, limit)
    return {
        "data": page.data,
        "offset": page.offset,
        "next_offset": page.next_offset,
        "done": page.done,
        "status": page.status,
    }


@router.get(
    "/{name}/builds/{build_id}/log/stream",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
        **error_responses(400, *AUTH_ERRORS, 404),
    },
)
async def stream_build_log(
    name: str,
    build_id: str,
    ctx: TeamContext,
    db: Db,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> StreamingResponse:
    """Server-sent events until the build ends: ``status`` (the build, as
    ``…/builds/{build_id}`` gives it; at the start, on each change and at the end) and ``log``
    (``{"data", "offset", "next_offset"}``)."""
    events = await builds.stream_log(db, settings, ctx, name, build_id, offset)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
