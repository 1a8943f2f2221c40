"""What the control plane's WebSocket routes share, the API's (exec, pty, watch) and the
dashboard's (the terminal): admitting a stream before the upgrade (:func:`open_or_deny`),
refusing a handshake with the HTTP answer the REST API would give,
an error as a stream's ``error`` frame (both through the one map in ``http_errors``), reading
one message and closing without caring whether the client is still there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from warren.cp.http_errors import response_for, status_and_code
from warren.cp.security import credentials
from warren.cp.services.context import AuthContext
from warren.cp.services.stream_slots import Slot
from warren.cp.state import state_of
from warren.errors import WarrenError

T = TypeVar("T")


async def open_or_deny(
    websocket: WebSocket,
    slot: Slot,
    open_: Callable[[AuthContext], Awaitable[T]],
    *,
    admit: Callable[[], Awaitable[AuthContext]] | None = None,
) -> T | None:
    """Before the upgrade: the caller admitted (the API's credentials, from headers or query
    parameters, through the one gate; or ``admit``, the dashboard's session), the stream
    counted for its team in ``slot`` (429 past the team's open streams), then ``open_(ctx)``.
    None once a refusal is answered, as the REST API answers it (plain JSON)."""
    state = state_of(websocket)
    try:
        if admit is None:
            creds = credentials.from_websocket(websocket.headers, websocket.query_params)
            ctx = await state.gate.admit(creds, require_user=False)
        else:
            ctx = await admit()
        slot.claim(ctx, state.settings.max_streams_per_team)
        return await open_(ctx)
    except Exception as e:
        await deny(websocket, e)
        return None


async def deny(websocket: WebSocket, exc: BaseException) -> None:
    """Refuse the handshake with ``exc``'s HTTP answer (status, JSON envelope)."""
    resp = response_for(exc)
    try:
        await websocket.send_denial_response(resp)
    except RuntimeError:
        # A server without the denial-response extension: close with 4000 + the HTTP status.
        await websocket.close(code=4000 + resp.status_code, reason=bytes(resp.body).decode()[:120])


def error_parts(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, code, message) of an error as the REST routes answer it; anything
    unexpected is a masked 500."""
    if isinstance(exc, WarrenError):
        status, code = status_and_code(exc)
        return status, code, exc.message
    return 500, "internal_error", "internal error"


def error_frame(exc: BaseException) -> dict[str, Any]:
    """An error as the terminal's and the watch's ``error`` frame."""
    status, code, message = error_parts(exc)
    return {"type": "error", "code": code, "message": message, "status": status}


async def receive(websocket: WebSocket) -> str | bytes | None:
    """The next message's text or bytes; None once the client has gone."""
    try:
        msg = await websocket.receive()
    except (WebSocketDisconnect, RuntimeError):
        return None
    if msg["type"] == "websocket.disconnect":
        return None
    text = msg.get("text")
    return text if text is not None else (msg.get("bytes") or b"")


async def close(websocket: WebSocket) -> None:
    """Close the socket unless the client already has (a route's ``finally``)."""
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()
