"""envd's plain HTTP file routes, ``GET/POST /files`` (docs/e2b.md §3.2).

- ``GET /files?path=&username=``: the file, streamed (404 ``{code, message}`` before any byte
  when it is missing); gzip-encoded on the fly with ``Accept-Encoding: gzip``.
- ``POST /files?path=&username=``: ``multipart/form-data`` (parts named ``file``, each part's
  filename its path unless ``?path=`` names the single file; each file at most the upload cap)
  or ``application/octet-stream`` with ``?path=`` (streamed; ``Content-Encoding: gzip`` is
  inflated as it streams, at most the upload cap inflated). One upload's files together, and an
  octet-stream body as sent, are at most the upload cap (413). ``X-Metadata-<key>`` headers become
  the files' metadata. Parents are made, an existing file is replaced. 200
  ``[{name, type: "file", path, metadata?}]``.

Either route takes the sandbox's ``X-Access-Token`` or, instead, E2B's URL signature
(``signature``, ``signature_expiration``; ``cp/services/envd_signatures.py``) for this path,
operation (``read`` / ``write``) and ``username``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from warren import errors
from warren.cp.e2b.envd.call import EnvdCall, envd_call
from warren.cp.e2b.envd.uploads import FileParts
from warren.cp.e2b.errors import e2b_error, e2b_error_for, sandbox_not_found
from warren.cp.services import envd_files, envd_fs, envd_signatures, files
from warren.cp.services.envd_access import signed_access
from warren.cp.state import state_of

# What a multipart upload may carry beyond its files' bytes (part heads, boundaries, fields), as
# the main API's unary upload allows.
FORM_SLACK = 1 << 20
# A file the guest could not write for want of space: E2B's 507 (the SDK's "not enough space").
_NO_SPACE = 507


async def _signed_call(request: Request, op: envd_signatures.Operation) -> EnvdCall:
    state = state_of(request)
    secret, sandbox_id = state.settings.jwt_secret, request.scope["e2b"][0]
    q = request.query_params
    user = q.get("username", "")
    path, sig, exp = q.get("path", ""), q.get("signature", ""), q.get("signature_expiration")
    envd_signatures.well_formed(sig, exp)

    def check(epoch: int) -> None:  # against the sandbox's current token
        envd_signatures.verify(secret, sandbox_id, path, op, user, sig, exp, epoch)

    ctx, found = await signed_access(state.engine, sandbox_id, check)
    return EnvdCall(state, request, sandbox_id, ctx, found, user or None, None)


def _signed(request: Request) -> bool:
    return "signature" in request.query_params and "x-access-token" not in request.headers


async def _call(request: Request, op: envd_signatures.Operation) -> EnvdCall | Response:
    """The call's context: by ``X-Access-Token`` when it is sent, else by the URL's signature."""
    try:
        if _signed(request):
            call = await _signed_call(request, op)
        else:
            call = await envd_call(request)
    except errors.NotFound:
        return sandbox_not_found(request.scope["e2b"][0])
    except errors.WarrenError as exc:
        return e2b_error_for(exc)
    if call.sandbox.sandbox.status != "running":
        return sandbox_not_found(call.sandbox_id)
    return call


def _no_space(message: str) -> bool:
    # The guest's ENOSPC / EDQUOT carry the kernel's words; other RESOURCE_EXHAUSTED are caps.
    return "no space" in message.lower() or "quota" in message.lower()


def _error(call: EnvdCall, exc: errors.WarrenError) -> Response:
    if isinstance(exc, errors.InvalidState):
        return sandbox_not_found(call.sandbox_id)  # paused meanwhile
    if isinstance(exc, errors.AgentError) and exc.rpc_code == "RESOURCE_EXHAUSTED" and _no_space(exc.message):
        return e2b_error(_NO_SPACE, exc.message)
    return e2b_error_for(exc)


def _path(request: Request) -> str | None:
    path = request.query_params.get("path")
    return envd_fs.sandbox_path(path) if path else None


def _required_path(request: Request) -> str:
    path = _path(request)
    if path is None:
        raise errors.InvalidRequest("path is required")
    return path


def _wants_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


async def download(request: Request) -> Response:
    call = await _call(request, "read")
    if isinstance(call, Response):
        return call
    try:
        body = json.dumps({"path": _required_path(request), "user": call.user or ""}).encode()
        streams = call.state.settings.max_streams_per_team
        chunks = await files.open_read(
            call.state.engine, call.state.pool, call.ctx, call.sandbox_id, body, max_streams=streams
        )
    except errors.WarrenError as exc:
        return _error(call, exc)
    if _wants_gzip(request):
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return StreamingResponse(
            envd_files.gzip(chunks), media_type="application/octet-stream", headers=headers
        )
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Vary": "Accept-Encoding"}
    )


async def upload(request: Request) -> Response:
    call = await _call(request, "write")
    if isinstance(call, Response):
        return call
    try:
        return JSONResponse(await _upload(call, request))
    except errors.WarrenError as exc:
        return _error(call, exc)


async def _upload(call: EnvdCall, request: Request) -> list[dict[str, Any]]:
    metadata = envd_files.metadata_from_headers(request.headers.items())
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/octet-stream"):
        raise errors.InvalidRequest("the body must be multipart/form-data or application/octet-stream")
    state, user = call.state, call.user or ""
    streams = state.settings.max_streams_per_team
    tgt = await files.upload_target(
        state.engine, state.pool, call.ctx, call.sandbox_id, user, max_streams=streams
    )
    if ctype == "multipart/form-data":
        written = await _multipart(request, tgt, metadata, int(state.settings.max_upload_bytes))
    else:
        written = await _octets(request, tgt, metadata, int(state.settings.max_upload_bytes))
    return [await _written(tgt, p, user) for p in written]


def _encoding(request: Request) -> str:
    encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
    if encoding not in ("identity", "gzip"):
        raise errors.InvalidRequest(f"unsupported Content-Encoding {encoding[:32]!r} (gzip only)")
    return encoding


async def _multipart(
    request: Request, tgt: files.UploadTarget, metadata: dict[str, str], cap: int
) -> list[str]:
    if _encoding(request) != "identity":
        raise errors.InvalidRequest("a multipart upload cannot be Content-Encoded; send octet-stream")
    # A signed URL signs ``?path=`` only: it writes there, whatever the part names.
    path = _required_path(request) if _signed(request) else _path(request)
    # The form as sent (parts not named ``file`` are read and dropped: bounded too) and its
    # files together.
    body = envd_files.UploadTotal(cap + FORM_SLACK).count(request.stream())
    parts = FileParts(request.headers.get("content-type", ""), body, cap)
    total = envd_files.UploadTotal(cap)
    written: list[str] = []
    while (filename := await parts.next_file()) is not None:
        if path is not None and written:
            raise errors.InvalidRequest("with ?path= the upload holds one file")
        target = path if path is not None else envd_fs.sandbox_path(filename)
        if not filename and path is None:
            raise errors.InvalidRequest("each file part needs its path as its filename")
        await files.write_stream(tgt, target, total.count(parts.data()), metadata)
        written.append(target)
    if not written:
        raise errors.InvalidRequest("no file part (named 'file') in the upload")
    return written


async def _octets(request: Request, tgt: files.UploadTarget, metadata: dict[str, str], cap: int) -> list[str]:
    path = _required_path(request)
    # The body as sent is capped (gzip's empty members inflate to nothing, so only this bounds
    # them), and so is what it inflates to (a gzip bomb).
    chunks: AsyncIterator[bytes] = envd_files.UploadTotal(cap).count(request.stream())
    if _encoding(request) == "gzip":
        chunks = envd_files.gunzip(chunks, cap)
    await files.write_stream(tgt, path, chunks, metadata)
    return [path]


async def _written(tgt: files.UploadTarget, path: str, user: str) -> dict[str, Any]:
    entry = await envd_fs.stat(tgt.sandbox, path, user)
    out: dict[str, Any] = {"name": entry.name, "type": "file", "path": entry.path}
    if entry.metadata:
        out["metadata"] = dict(entry.metadata)
    return out


async def files_without_sandbox(scope: Scope, receive: Receive, send: Send) -> None:
    """``/files`` that reached the listener with no sandbox in its header or host name: what
    ``download_url()`` / ``upload_url()`` make when ``E2B_SANDBOX_URL`` is set (docs/e2b.md §3.2).
    The signature cannot name its sandbox (finding it would mean trying every sandbox's
    token), so such a URL is refused with a 400 that says what to do."""
    response = e2b_error(
        400,
        "this /files URL names no sandbox: signed file URLs need the sandbox in the host name "
        "(49983-<sandbox id>.<WARREN_PREVIEW_DOMAIN>, i.e. E2B_SANDBOX_URL unset) or the "
        "E2b-Sandbox-Id header (see docs/e2b.md)",
    )
    await response(scope, receive, send)


ROUTES: list[BaseRoute] = [
    Route("/files", download, methods=["GET"]),
    Route("/files", upload, methods=["POST"]),
]
