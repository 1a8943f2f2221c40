"""envd's ASGI app (port 49983, docs/e2b.md §3): Connect RPCs ``/<package.Service>/<Method>``
dispatched to the service modules' handler tables, the plain HTTP routes, and ``/health``.

Every request is authenticated first (the sandbox's ``X-Access-Token``, ``call.envd_call``): a
wrong token is 401; a sandbox that is gone is E2B's 502 "was not found", on every route, which
is what the SDK sniffs to say the sandbox is not running.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from warren import errors
from warren.cp.e2b.envd import envs, files, filesystem, process
from warren.cp.e2b.envd.call import EnvdCall, envd_call
from warren.cp.e2b.envd.connect import (
    ConnectError,
    as_connect_error,
    client_stream_pace,
    end_stream,
    envelope,
    error_response,
    read_envelopes,
    read_one_envelope,
    read_unary,
    stream_response,
)
from warren.cp.e2b.errors import e2b_error, e2b_error_for, sandbox_not_found
from warren.cp.services import stream_slots
from warren.cp.state import AppState

log = logging.getLogger("warren.e2b.envd")

ENVD_PORT = 49983  # where E2B's SDK reaches envd (``E2b-Sandbox-Port``)
# The envd version reported to the SDK, which gates features by it (e2b/envd/versions.py): the
# highest whose features are all really served here (docs/e2b.md §5): recursive watch (0.1.4),
# stdin (0.3.0), the default user (0.4.0), close_stdin (0.5.2), octet-stream uploads (0.5.7),
# file metadata (0.6.2), entries in watch events (0.6.3), and the network-mounts watch flag
# (0.6.4: accepted; a sandbox has no network mounts to refuse).
ENVD_VERSION = "0.6.4"

UNARY = {f"process.Process/{k}": v for k, v in process.UNARY.items()} | {
    f"filesystem.Filesystem/{k}": v for k, v in filesystem.UNARY.items()
}
SERVER_STREAMS = {f"process.Process/{k}": v for k, v in process.SERVER_STREAMS.items()} | {
    f"filesystem.Filesystem/{k}": v for k, v in filesystem.SERVER_STREAMS.items()
}
CLIENT_STREAMS: dict[str, Any] = {f"process.Process/{k}": v for k, v in process.CLIENT_STREAMS.items()}


def _log_failure(exc: BaseException) -> None:
    if not isinstance(exc, (ConnectError, errors.WarrenError)):
        log.exception("envd call failed", exc_info=exc)


async def authenticated(request: Request) -> EnvdCall | Response:
    """The call's context, or the answer that ends it (shared by every route)."""
    try:
        return await envd_call(request)
    except errors.NotFound:
        return sandbox_not_found(request.scope["e2b"][0])
    except errors.WarrenError as exc:
        return e2b_error_for(exc)


class _SlotHeld(Response):
    """A stream's response that gives its team's stream slot back once it has run, however it
    ended: its last message sent (the process ended, the sandbox went), an error, or its client
    gone (Starlette then cancels the response)."""

    def __init__(self, inner: Response, slot: stream_slots.Slot) -> None:
        self.inner, self.slot = inner, slot
        self.status_code, self.background = inner.status_code, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.slot:
            await self.inner(scope, receive, send)


async def rpc(request: Request) -> Response:
    name = f"{request.path_params['service']}/{request.path_params['method']}"
    call = await authenticated(request)
    if isinstance(call, Response):
        return call
    # A stream holds one of its team's stream slots (services/stream_slots.py) while it is open:
    # past the cap it is refused before it starts, as 429 resource_exhausted.
    slot = stream_slots.Slot()
    try:
        if name in UNARY:
            answer = await UNARY[name](call, await read_unary(request))
            return answer if isinstance(answer, Response) else JSONResponse(answer)
        if name in SERVER_STREAMS:
            slot.claim(call.ctx, call.state.settings.max_streams_per_team)
            msg = await read_one_envelope(request)
            # Held: a revoked token (stream_revocation) ends the stream with Connect's
            # ``unauthenticated``, in its end-of-stream message.
            out = stream_slots.Held(SERVER_STREAMS[name](call, msg), slot)
            held = _SlotHeld(stream_response(out, _log_failure, final=process.is_end), slot)
            slot = stream_slots.Slot()  # the response gives it back
            return held
        if name in CLIENT_STREAMS:  # the reply is enveloped too, an error as the end of stream
            slot.claim(call.ctx, call.state.settings.max_streams_per_team)
            try:
                messages = read_envelopes(request, client_stream_pace(request))
                reply = envelope(await slot.guard(CLIENT_STREAMS[name](call, messages))) + end_stream()
            except Exception as exc:
                _log_failure(exc)
                reply = end_stream(as_connect_error(exc))
            return Response(reply, media_type="application/connect+json")
        raise ConnectError("unimplemented", f"{name} is not supported by Warren (see docs/e2b.md)")
    except Exception as exc:  # every failure becomes the call's Connect error
        _log_failure(exc)
        return error_response(as_connect_error(exc))
    finally:
        slot.release()  # a unary call's, a client stream's, a refused stream's (none held)


async def health(request: Request) -> Response:
    call = await authenticated(request)
    if isinstance(call, Response):
        return call
    if call.sandbox.sandbox.status != "running":
        return sandbox_not_found(call.sandbox_id)  # paused is "not running" to the SDK
    return Response(status_code=204)


async def _not_served(request: Request) -> Response:
    return e2b_error(501, f"{request.method} {request.url.path} is not supported by Warren (see docs/e2b.md)")


def envd_app(state: AppState) -> Starlette:
    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/{service:str}/{method:str}", rpc, methods=["POST"]),
            *files.ROUTES,
            *envs.ROUTES,
            Route("/{path:path}", _not_served, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]
    )
    app.state = state
    return app
