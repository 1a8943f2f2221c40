"""Exec REST and WebSocket routes (docs/spec.md §2.6, docs/design.md §4). Rules live in
``warren.cp.services.exec`` (``exec_unary``, ``exec_stream``); these handlers only move bytes in
and out, and turn errors into HTTP answers and the stream's error frames."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from warren.cp import ws
from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.api.disconnect import CLIENT_GONE, until_disconnected
from warren.cp.hosts.client_pool import HostClient
from warren.cp.http_errors import error_responses
from warren.cp.services import exec as svc
from warren.cp.services import exec_stream as stream
from warren.cp.services import exec_unary as unary
from warren.cp.services import sandbox_access, stream_slots
from warren.cp.services.context import AuthContext
from warren.cp.services.transfer_turns import account_key
from warren.cp.state import state_of

router = APIRouter(prefix="/v1/sandboxes", tags=["exec"])
T = TypeVar("T")


_ERR = error_responses(400, *AUTH_ERRORS, 404, 409, 502, 503)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a JSON body that the handler reads itself (so the service can judge it in
    SPEC's order: after the sandbox's status)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    }


@router.post(
    "/{sandbox_id}/exec",
    response_model=svc.ExecResult,
    responses=error_responses(400, *AUTH_ERRORS, 404, 409, 413, 502, 503),
    openapi_extra=json_body(svc.ExecBody),
)
async def exec_command(sandbox_id: str, request: Request, ctx: TeamContext) -> Response:
    """Run ``cmd`` with ``args`` (no shell) and wait for it. Output is UTF-8 text, or base64 for
    both streams when either is not UTF-8 (``encoding``). ``timeout_sec`` <= 0 means 30 s, and
    may not exceed the platform's maximum (default 3600). More than the unary output cap
    (16 MiB of stdout and stderr together by default) is 413 ``output_too_large``: the command
    is killed; use the exec stream. A client that disconnects cancels the command."""
    raw = await request.body()
    # The app's state read from the request, not a dependency (each costs a resolution).
    state = state_of(request)
    settings = state.settings
    work = unary.exec_command(state.engine, state.pool, ctx, sandbox_id, raw,
                              max_timeout=settings.max_exec_timeout_s,
                              max_output=settings.max_exec_output)  # fmt: skip
    answer = await until_disconnected(request, work)
    if answer is None:
        return Response(status_code=CLIENT_GONE)  # nobody is listening any more
    release = BackgroundTask(_on_loop, answer.release)
    if answer.whole is not None:
        return Response(answer.whole, media_type="application/json", background=release)
    assert answer.body is not None
    return StreamingResponse(answer.body, media_type="application/json", background=release)


async def _on_loop(fn: Callable[[], None]) -> None:
    """Run a quick sync callback on the event loop: Starlette sends a sync background task to a
    worker thread, a hop that costs more than ``release`` itself."""
    fn()


def _max_timeout(request: Request | WebSocket) -> int:
    return int(request.app.state.settings.max_exec_timeout_s)


@router.websocket("/{sandbox_id}/exec/stream")
async def exec_stream(websocket: WebSocket, sandbox_id: str) -> None:
    """Interactive exec. Auth: ``X-API-Key`` / ``Authorization: Bearer`` headers, or the
    ``api_key`` / ``token`` query parameters (browsers cannot set WebSocket headers). Errors
    before the upgrade are plain JSON answers (400/401/404/409/503; 429 ``too_many_streams``
    past the team's open streams)."""
    state = state_of(websocket)
    engine, pool = state.engine, state.pool

    async def open_(ctx: AuthContext) -> tuple[AuthContext, sandbox_access.Target, HostClient]:
        tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
        return ctx, tgt, tgt.client()

    with stream_slots.Slot() as slot:
        opened = await ws.open_or_deny(websocket, slot, open_)
        if opened is None:
            return
        ctx, tgt, client = opened
        await websocket.accept()
        try:
            session = stream.stream_session(
                engine, client, tgt.uuid, tgt.sid, _peer(websocket), max_timeout=_max_timeout(websocket),
                account=account_key(ctx.team_id, ctx.owner_id),
            )  # fmt: skip
            # Ends with an error frame if the credentials are revoked meanwhile (stream_revocation).
            await slot.guard_notify(session, lambda e: websocket.send_text(json.dumps(error_frame(e))))
        finally:
            await ws.close(websocket)


def _peer(websocket: WebSocket) -> stream.Peer:
    """The accepted WebSocket as the stream protocol's client: JSON text frames both ways."""

    async def recv() -> stream.Frame | None:
        raw = await ws.receive(websocket)
        if raw is None:
            return None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            frame = json.loads(raw)
        except (ValueError, RecursionError):
            return {"type": "<invalid JSON>"}
        return frame if isinstance(frame, dict) else {"type": "<not an object>"}

    async def send(frame: stream.Frame) -> None:
        await websocket.send_text(json.dumps(frame, separators=(",", ":")))

    return stream.Peer(recv, send, error_frame)


def error_frame(exc: BaseException) -> stream.Frame:
    """An error as the stream's ``error`` frame, with the HTTP status and code the same error
    answers on the REST routes; its text is ``data``, as the stream's output frames carry theirs."""
    status, code, message = ws.error_parts(exc)
    return {"type": "error", "data": message, "code": code, "status": status}


@router.post(
    "/{sandbox_id}/processes",
    status_code=201,
    response_model=svc.ProcessInfo,
    response_model_exclude_none=True,
    responses=_ERR,
    openapi_extra=json_body(svc.StartProcessBody),
)
async def start_process(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> svc.ProcessInfo:
    """Start a background process (no shell) that keeps running after this request. Attach to
    its output with the exec WebSocket: first frame ``{"type": "attach", "pid": N}``."""
    return await svc.start_process(
        db, pool, ctx, sandbox_id, await request.body(), max_timeout=_max_timeout(request)
    )


@router.get(
    "/{sandbox_id}/processes",
    response_model=list[svc.ProcessInfo],
    response_model_exclude_none=True,
    responses=_ERR,
)
async def list_processes(sandbox_id: str, ctx: TeamContext, db: Db, pool: Pool) -> list[svc.ProcessInfo]:
    return await svc.list_processes(db, pool, ctx, sandbox_id)


@router.post(
    "/{sandbox_id}/processes/{pid_or_tag}/signal",
    status_code=204,
    responses=_ERR,
    openapi_extra=json_body(svc.SignalBody),
)
async def signal_process(
    sandbox_id: str, pid_or_tag: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> Response:
    """Send a signal (default SIGTERM) to a process selected by pid or by tag."""
    await svc.signal_process(db, pool, ctx, sandbox_id, pid_or_tag, await request.body())
    return Response(status_code=204)


@router.post(
    "/{sandbox_id}/processes/{pid_or_tag}/stdin",
    status_code=204,
    responses=_ERR,
    openapi_extra=json_body(svc.StdinBody),
)
async def send_stdin(
    sandbox_id: str, pid_or_tag: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> Response:
    """Write to a process's stdin (``data`` text or ``data_b64``); ``close`` closes it after."""
    await svc.send_stdin(db, pool, ctx, sandbox_id, pid_or_tag, await request.body())
    return Response(status_code=204)
