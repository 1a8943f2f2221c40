"""The terminal WebSocket ``/v1/sandboxes/{id}/pty`` (docs/networking.md §2). Authenticated as
the exec stream is; every rule is in ``warren.cp.services.pty``."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from warren.cp import ws
from warren.cp.services import pty as svc
from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.cp.state import state_of

router = APIRouter(prefix="/v1/sandboxes", tags=["pty"])


@router.websocket("/{sandbox_id}/pty")
async def pty_stream(websocket: WebSocket, sandbox_id: str) -> None:
    """A terminal. Auth: ``X-API-Key`` / ``Authorization: Bearer`` headers, or the ``api_key``
    / ``token`` query parameters. Errors before the upgrade are plain JSON answers
    (400/401/404/409/503; 429 ``too_many_streams`` past the team's open streams)."""
    state = state_of(websocket)

    async def open_(ctx: AuthContext) -> svc.Terminal:
        return await svc.prepare(state.engine, state.pool, ctx, sandbox_id)

    with stream_slots.Slot() as slot:
        tgt = await ws.open_or_deny(websocket, slot, open_)
        if tgt is None:
            return
        await websocket.accept()
        try:
            # Ends with an error frame if the credentials are revoked meanwhile (stream_revocation).
            session = svc.session(state.engine, tgt, peer(websocket))
            await slot.guard_notify(session, lambda e: websocket.send_json(ws.error_frame(e)))
        finally:
            await ws.close(websocket)


def peer(websocket: WebSocket) -> svc.PtyPeer:
    """An accepted WebSocket as the terminal protocol's client (the dashboard's route uses it
    too)."""

    async def recv() -> str | bytes | None:
        return await ws.receive(websocket)

    async def send_json(frame: svc.Frame) -> None:
        await websocket.send_json(frame)

    return svc.PtyPeer(recv, websocket.send_bytes, send_json, ws.error_frame)
