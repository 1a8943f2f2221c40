"""The sandbox page's terminal: a WebSocket at ``/dashboard/sandboxes/{id}/terminal`` speaking
the PTY protocol (docs/networking.md §2) for the signed-in browser session.

The session cookie is ``SameSite=Lax``, so a page on another port of the same host ("same
site") gets it sent with its WebSocket handshakes, and the browser applies no same-origin rule
to WebSockets. The handshake is therefore judged like a dashboard action before it is accepted:

1. **Origin** must be present and be the control plane's own (``csrf.own_origins``: the origin
   in use or the configured public URL); a browser always sends it on a WebSocket handshake.
2. **CSRF token**: the page offers the subprotocols ``warren.terminal`` and ``csrf.<token>``
   (a browser cannot set other headers on a WebSocket); the token must be the session's.
3. **Session**: the DB-checked user (``web.session_auth``), with an active team.
4. **Sandbox**: the team's and running, on a reachable host (``pty.prepare``: another team's is
   a 404 like an unknown id, a stopped one a 409, an unreachable host a 503).

A refusal is the HTTP answer the REST API would give (``http_errors.response_for``), sent as the
handshake's denial response. Once accepted, the session is the PTY service's (the same one the
API's ``/v1/sandboxes/{id}/pty`` uses, which also bounds every frame); this module only moves
frames.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, WebSocket

from warren.cp import ws
from warren.cp.dashboard import csrf
from warren.cp.dashboard import session as sessions
from warren.cp.dashboard.web import session_auth
from warren.cp.services import pty as pty_svc
from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.cp.state import state_of
from warren.errors import Forbidden, NotFound, Unauthorized

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

SUBPROTOCOL = "warren.terminal"
CSRF_PREFIX = "csrf."


def _offered(websocket: WebSocket) -> list[str]:
    raw = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _check_handshake(websocket: WebSocket, public_url: str, session_csrf: str | None) -> None:
    """Origin and CSRF token (steps 1 and 2 above); a failure is 403 ``csrf_failed``."""
    origin = websocket.headers.get("origin")
    if origin is None or csrf.normalize_origin(origin) not in csrf.own_origins(websocket, public_url):
        raise Forbidden("cross-site WebSocket refused", code="csrf_failed")
    offered = _offered(websocket)
    token = next((p[len(CSRF_PREFIX) :] for p in offered if p.startswith(CSRF_PREFIX)), None)
    if SUBPROTOCOL not in offered or session_csrf is None or not csrf.tokens_match(session_csrf, token):
        raise Forbidden("missing or wrong CSRF token", code="csrf_failed")


def browser_peer(websocket: WebSocket) -> pty_svc.PtyPeer:
    """The accepted socket as the PTY protocol's client: binary frames are terminal bytes both
    ways, text frames JSON control messages. Frame sizes are judged by the PTY service."""

    async def recv() -> str | bytes | None:
        return await ws.receive(websocket)

    async def send_json(frame: pty_svc.Frame) -> None:
        await websocket.send_text(json.dumps(frame, separators=(",", ":")))

    return pty_svc.PtyPeer(recv, websocket.send_bytes, send_json, ws.error_frame)


@router.websocket("/dashboard/sandboxes/{sandbox_id}/terminal")
async def terminal(websocket: WebSocket, sandbox_id: str) -> None:
    state = state_of(websocket)

    async def admit() -> AuthContext:
        sess = sessions.read(websocket, state.settings.jwt_secret)
        _check_handshake(websocket, state.settings.public_url, sess.csrf if sess else None)
        found = await session_auth(websocket)
        if found is None:
            raise Unauthorized("your session has ended; sign in again")
        if found[1].team_id is None:
            raise NotFound("sandbox not found")
        return found[1]

    async def open_(ctx: AuthContext) -> pty_svc.Terminal:
        return await pty_svc.prepare(state.engine, state.pool, ctx, sandbox_id)

    with stream_slots.Slot() as slot:
        tgt = await ws.open_or_deny(websocket, slot, open_, admit=admit)
        if tgt is None:
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        try:
            # Ends with an error frame if the session loses the team meanwhile (stream_revocation).
            await slot.guard_notify(
                pty_svc.session(state.engine, tgt, browser_peer(websocket)),
                lambda e: websocket.send_text(json.dumps(ws.error_frame(e), separators=(",", ":"))),
            )
        finally:
            await ws.close(websocket)
