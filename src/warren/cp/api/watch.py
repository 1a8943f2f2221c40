"""Directory watch (docs/networking.md §4): the WebSocket ``/v1/sandboxes/{id}/watch`` and the
polling watchers under ``/v1/sandboxes/{id}/watchers``. Rules in ``warren.cp.services.watch``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Query, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect

from warren.aio import until_first
from warren.cp import ws
from warren.cp.api.deps import AUTH_ERRORS, Db, Pool, TeamContext
from warren.cp.api.exec import json_body
from warren.cp.http_errors import error_responses
from warren.cp.services import stream_slots
from warren.cp.services import watch as svc
from warren.cp.services.context import AuthContext
from warren.cp.state import state_of

router = APIRouter(prefix="/v1/sandboxes", tags=["watch"])

NO_MESSAGES = "the watch takes no messages"
_ERR = error_responses(400, *AUTH_ERRORS, 403, 404, 409, 413, 502, 503)


@router.websocket("/{sandbox_id}/watch")
async def watch_stream(
    websocket: WebSocket,
    sandbox_id: str,
    path: str = Query(default=""),
    recursive: bool = Query(default=True),
    user: str = Query(default=""),
) -> None:
    """A directory's changes as JSON text frames: ``{"type": "started"}`` once the watch is in
    place, then one frame per event (``create``, ``write``, ``remove``, ``rename`` with
    ``old_path``, ``chmod``; ``entry`` as the files API's) and ``{"type": "overflow"}`` where
    events were dropped; a message from the client ends the watch (1008). Auth as the exec
    WebSocket. Refusals before the upgrade are plain JSON answers (400, 401, 403, 404 missing
    path, 409, 413 too many directories, 429 ``too_many_streams`` past the team's open streams,
    503)."""
    state = state_of(websocket)

    async def open_(ctx: AuthContext) -> AsyncGenerator[dict[str, Any]]:
        return await svc.open_stream(state.engine, state.pool, ctx, sandbox_id, path, recursive, user)

    with stream_slots.Slot() as slot:
        frames = await ws.open_or_deny(websocket, slot, open_)
        if frames is None:
            return
        await websocket.accept()
        try:
            await websocket.send_json({"type": "started"})
            async with contextlib.aclosing(frames):
                # Ends with an error frame if the credentials are revoked (stream_revocation).
                relay = _relay(websocket, frames)
                await slot.guard_notify(relay, lambda e: websocket.send_json(ws.error_frame(e)))
        finally:
            await ws.close(websocket)


async def _relay(websocket: WebSocket, frames: AsyncGenerator[dict[str, Any]]) -> None:
    """Events out until the watch ends or the client goes (its close ends the watch). The
    watch takes no messages: one ends it, closed 1008. Until session 34 they were read and
    dropped for as long as the watch lived, at line rate (a CP core for small frames)."""

    async def client_gone() -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            if (await websocket.receive())["type"] != "websocket.disconnect":
                await websocket.close(code=1008, reason=NO_MESSAGES)

    async def pump() -> None:
        try:
            async for frame in frames:
                await websocket.send_json(frame)
        except Exception as e:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.send_json(ws.error_frame(e))

    gone = asyncio.create_task(client_gone())
    relay = asyncio.create_task(pump())
    await until_first(gone, relay)


@router.post("/{sandbox_id}/watchers", status_code=201, response_model=svc.WatcherCreated, responses=_ERR,
             openapi_extra=json_body(svc.WatchBody))  # fmt: skip
async def create_watcher(
    sandbox_id: str, request: Request, ctx: TeamContext, db: Db, pool: Pool
) -> svc.WatcherCreated:
    """A polling watcher: its events wait in the sandbox's agent (at most 1000; past it
    ``overflowed``) until ``GET …/watchers/{id}/events``. At most 16 per sandbox (413); one not
    polled for 10 minutes is removed, and all go with their sandbox."""
    return await svc.create_watcher(db, pool, ctx, sandbox_id, await request.body())


@router.get("/{sandbox_id}/watchers/{watcher_id}/events", response_model=svc.WatcherEvents,
            response_model_exclude_none=True, responses=_ERR)  # fmt: skip
async def poll_watcher(
    sandbox_id: str, watcher_id: str, ctx: TeamContext, db: Db, pool: Pool
) -> svc.WatcherEvents:
    """The events since the last poll, oldest first; ``overflowed``: some were dropped."""
    return await svc.poll_watcher(db, pool, ctx, sandbox_id, watcher_id)


@router.delete("/{sandbox_id}/watchers/{watcher_id}", status_code=204, responses=_ERR)
async def remove_watcher(sandbox_id: str, watcher_id: str, ctx: TeamContext, db: Db, pool: Pool) -> Response:
    await svc.remove_watcher(db, pool, ctx, sandbox_id, watcher_id)
    return Response(status_code=204)
