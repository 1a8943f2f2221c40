"""Exec REST and WebSocket routes (SPEC §2.6, DESIGN §4). Rules live in
``warren.cp.services.exec``; these handlers only move bytes in and out."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect, WebSocketState

from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext, authenticate
from warren.cp.http_errors import error_responses, response_for
from warren.cp.services import exec as svc
from warren.cp.services import sandbox_access

router = APIRouter(prefix="/v1/sandboxes", tags=["exec"])


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
    "/{sandbox_id}/exec", response_model=svc.ExecResult, responses=_ERR, openapi_extra=json_body(svc.ExecBody)
)
async def exec_command(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> svc.ExecResult:
    """Run ``cmd`` with ``args`` (no shell) and wait for it. Output is UTF-8 text, or base64 for
    both streams when either is not UTF-8 (``encoding``). ``timeout_sec`` <= 0 means 30 s."""
    return await svc.exec_command(db, pool, ctx, sandbox_id, await request.body())


@router.websocket("/{sandbox_id}/exec/stream")
async def exec_stream(websocket: WebSocket, sandbox_id: str) -> None:
    """Interactive exec. Auth: ``X-API-Key`` / ``Authorization: Bearer`` headers, or the
    ``api_key`` / ``token`` query parameters (browsers cannot set WebSocket headers). Errors
    before the upgrade are plain JSON answers (400/401/404/409/503)."""
    app = websocket.app
    engine, pool = app.state.engine, app.state.pool
    headers, query = websocket.headers, websocket.query_params
    auth = headers.get("authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    try:
        ctx = await authenticate(
            engine,
            api_key=headers.get("x-api-key") or query.get("api_key"),
            bearer=bearer or query.get("token"),
            require_user=False,
            jwt_secret=app.state.settings.jwt_secret,
        )
        tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
        client = tgt.client()
    except Exception as e:
        await _deny(websocket, e)
        return
    await websocket.accept()

    async def recv() -> svc.Frame | None:
        try:
            msg = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if msg["type"] == "websocket.disconnect":
            return None
        raw = msg.get("text")
        if raw is None:
            raw = (msg.get("bytes") or b"").decode("utf-8", "replace")
        try:
            frame = json.loads(raw)
        except ValueError:
            return {"type": "<invalid JSON>"}
        return frame if isinstance(frame, dict) else {"type": "<not an object>"}

    async def send(frame: svc.Frame) -> None:
        await websocket.send_text(json.dumps(frame, separators=(",", ":")))

    try:
        await svc.stream_session(engine, client, tgt.uuid, tgt.sid, recv, send)
    finally:
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()


async def _deny(websocket: WebSocket, exc: BaseException) -> None:
    resp = response_for(exc)
    try:
        await websocket.send_denial_response(resp)
    except RuntimeError:
        # A server without the denial-response extension: close with 4000 + the HTTP status.
        await websocket.close(code=4000 + resp.status_code, reason=bytes(resp.body).decode()[:120])


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
    return await svc.start_process(db, pool, ctx, sandbox_id, await request.body())


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
