"""Sandbox ports other than envd's through the E2B listener (docs/e2b.md §4): the preview proxy
(docs/networking.md §3), reached by ``E2b-Sandbox-Port`` or a ``{port}-{sandbox_id}.{domain}``
host name; ``cp/e2b/app.py`` puts ``(sandbox_id, port)`` in ``scope["e2b"]``.

What differs from the preview proxy on the main port, and only that, lives here:

- the credential is E2B's header, ``E2B-Traffic-Access-Token`` (the sandbox's Warren traffic
  token), given to the proxy as its own header; who needs it is the one rule in
  ``services/preview.py`` (a sandbox with ``all_ports_public``, E2B's default
  ``allowPublicTraffic: true``, needs none);
- the envd access token (``X-Access-Token``, which the code interpreter SDK sends too) never
  reaches a server in the sandbox;
- refusals are in E2B's shape, and the two the SDK sniffs keep its words: a sandbox that is
  unknown, gone or paused is a 502 "... was not found", a port nothing listens on a 502 "... port
  is not open ...".
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from warren.cp.e2b.errors import e2b_error, sandbox_not_found
from warren.cp.proxy.app import Proxy
from warren.cp.proxy.routing import Route
from warren.cp.services import preview
from warren.cp.state import AppState

TRAFFIC_TOKEN_HEADER = b"e2b-traffic-access-token"
_DROP = frozenset({b"x-access-token", preview.TOKEN_HEADER.encode()})


class E2BProxy(Proxy):
    """The preview proxy, answering its refusals in E2B's shape (see module doc)."""

    def error_response(self, scope: Scope, status: int, code: str, message: str) -> Response:
        sandbox_id, _ = scope["e2b"]
        if status == 404 or code == "sandbox_paused":
            return sandbox_not_found(sandbox_id)
        if code == "port_not_open":
            return e2b_error(502, f"The sandbox {sandbox_id} is running but port is not open ({message})")
        return e2b_error(status, message)


def _scope_for_proxy(scope: Scope) -> Scope:
    """The request as the proxy reads it: E2B's traffic token under the proxy's header name, the
    envd token and any client-sent proxy header dropped."""
    headers: list[tuple[bytes, bytes]] = []
    token: bytes | None = None
    for k, v in scope["headers"]:
        if k == TRAFFIC_TOKEN_HEADER:
            token = v if token is None else token
        elif k not in _DROP:
            headers.append((k, v))
    if token is not None:
        headers.append((preview.TOKEN_HEADER.encode(), token))
    return {**scope, "headers": headers}


class PortApp:
    """The ASGI app of the sandbox-port plane (one proxy per process, like the main port's)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.proxy = E2BProxy(state.settings, budget=state.refusal_budget)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sandbox_id, port = scope["e2b"]
        if not 1 <= port <= 65535:
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008, "reason": "invalid port"})
                return
            bad = e2b_error(400, "E2b-Sandbox-Port must be a port number, 1..65535")
            await bad(scope, receive, send)
            return
        r = Route(sandbox_id, port, scope["path"] or "/", "", by_host=True)
        await self.proxy(r, _scope_for_proxy(scope), receive, send, self.state.engine, self.state.pool)


def port_app(state: AppState) -> ASGIApp:
    return PortApp(state)
