"""The observing middleware: every request's id, client address and latency.

For each HTTP request (and WebSocket) it takes the id from ``X-Request-Id`` when that follows
the rules of ``warren.request_context`` (else makes one), puts it and the client's address in
the context variables log lines and audit records read, returns the id in the response's
``X-Request-Id``, and times the request into the latency histograms of ``cp/telemetry.py``
(by route template, so label values are bounded by the app's routes).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

from prometheus_client import Histogram
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warren.cp import telemetry
from warren.cp.services import audit
from warren.cp.services.context import AuthContext
from warren.cp.state import client_ip as trusted_client_ip
from warren.request_context import accept_request_id, actor_box, client_ip, request_id

_HEADER = b"x-request-id"
_SANDBOX = "/v1/sandboxes/{sandbox_id}"
_FILES = _SANDBOX + "/files/"
# Route templates (method, path) whose latency has a histogram of its own.
_EXEC_ROUTES = {("POST", _SANDBOX + "/exec"), ("POST", _SANDBOX + "/processes")}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


def _route_of(scope: Scope) -> str:
    """The matched route's template (``/v1/sandboxes/{sandbox_id}``); unmatched: ``other``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


def _observe(method: str, route: str, status: int, seconds: float) -> None:
    for histogram in _histograms(method, route, status // 100):
        histogram.observe(seconds)


@functools.lru_cache(maxsize=4096)
def _histograms(method: str, route: str, status_class: int) -> tuple[Histogram, ...]:
    """The histogram children a request's latency goes to, looked up once per (method, route
    template, status class): ``labels`` takes a lock and checks its values on every call. The
    keys are bounded: httptools' methods, the app's routes (``other`` for the rest)."""
    result = telemetry.result_of(status_class * 100)
    out = [telemetry.HTTP_SECONDS.labels(method, route, f"{status_class}xx")]
    if method == "POST" and route == "/v1/sandboxes":
        out.append(telemetry.CREATE_SECONDS.labels(result))
    elif (method, route) in _EXEC_ROUTES:
        out.append(telemetry.EXEC_SECONDS.labels(result))
    elif route.startswith(_FILES):
        out.append(telemetry.FILE_SECONDS.labels(route.removeprefix(_FILES), result))
    return tuple(out)


class ObserveMiddleware:
    """Request id, client address and latency for every request (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = accept_request_id(_header(scope, _HEADER))
        rid_token = request_id.set(rid)
        ip_token = client_ip.set(_client(scope))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept"):
                status = int(message.get("status", 101))
                headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, rid.encode("ascii"))]}
            await send(message)

        box: list[object] = []
        box_token = actor_box.set(box)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            actor_box.reset(box_token)
            if scope["type"] == "http":
                route = _route_of(scope)
                _observe(scope["method"], route, status, time.perf_counter() - started)
                if box and audit.audits_failure(scope["method"], route, status):
                    await _record_failure(scope, box[0], route, status)
            client_ip.reset(ip_token)
            request_id.reset(rid_token)


async def _record_failure(scope: Scope, actor: object, route: str, status: int) -> None:
    """The audit record of a failed change (services/audit.py decides which), written after the
    response went out; never raises (audit writes are best effort)."""
    engine = getattr(getattr(scope.get("app"), "state", None), "engine", None)
    if engine is None or not isinstance(actor, AuthContext):
        return  # the standalone preview proxy has no audit log
    params = scope.get("path_params") or {}
    resource = next((str(v) for v in params.values()), "")
    with contextlib.suppress(Exception):
        await audit.record_failure(
            engine, actor, method=scope["method"], route=route, status=status, resource_id=resource
        )


def _client(scope: Scope) -> str:
    try:
        return trusted_client_ip(HTTPConnection(scope))
    except (AttributeError, KeyError, ValueError):
        client = scope.get("client")
        return str(client[0]) if client else ""
