"""The control API's ASGI app: E2B's routes over ``cp.services`` (docs/e2b.md §2).

Every route authenticates ``X-API-KEY`` (a Warren API key of the team; nothing else) through the
one authentication service, then the team's rate limit, and answers errors in E2B's shape
(``{"code": <status>, "message"}``, statuses from the one domain map). What E2B has and Warren
does not answers 501 naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from warren.cp.e2b.control import forks, sandboxes, snapshots
from warren.cp.e2b.control.models import Unsupported
from warren.cp.e2b.errors import e2b_error, e2b_error_for, not_implemented
from warren.cp.security.credentials import Credentials
from warren.cp.services.context import AuthContext
from warren.cp.services.strict import INT64_MAX, json_object, text_problem
from warren.cp.state import AppState, state_of
from warren.errors import InvalidRequest, PayloadTooLarge, Unauthorized, WarrenError

log = logging.getLogger("warren.e2b")

Handler = Callable[["Call"], Awaitable[Response]]


class Call:
    """One authenticated request: the request, the caller, the app's state."""

    def __init__(self, request: Request, ctx: AuthContext, state: AppState) -> None:
        self.request, self.ctx, self.state = request, ctx, state

    @property
    def sandbox_id(self) -> str:
        return str(self.request.path_params.get("sandbox_id", ""))

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    async def body(self) -> dict[str, Any]:
        """The JSON object body (empty: ``{}``), within the CP's JSON cap, every string storable."""
        cap = self.state.settings.max_json_body
        raw = bytearray()
        async for chunk in self.request.stream():
            raw += chunk
            if len(raw) > cap:
                raise PayloadTooLarge(f"request body larger than {cap} bytes")
        if not raw.strip():
            return {}
        value = json_object(raw, "request body is not valid JSON", "request body must be a JSON object")
        problem = _problem(value)
        if problem:
            raise InvalidRequest(f"request body: {problem}")
        return value


def _problem(value: Any, depth: int = 0) -> str | None:
    if depth > 32:
        return "nested too deeply"
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        return None if -INT64_MAX - 1 <= value <= INT64_MAX else "integer out of range"
    if isinstance(value, list):
        return next((p for v in value if (p := _problem(v, depth + 1))), None)
    if isinstance(value, dict):
        return next((p for kv in value.items() for v in kv if (p := _problem(v, depth + 1))), None)
    return None


async def _authenticate(request: Request, state: AppState) -> AuthContext:
    key = request.headers.get("x-api-key")
    if not key:
        raise Unauthorized("missing X-API-KEY header")
    return await state.gate.admit(Credentials(api_key=key), require_user=False)


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state = state_of(request)
        try:
            ctx = await _authenticate(request, state)
            return await handler(Call(request, ctx, state))
        except Unsupported as e:
            return not_implemented(e.what)
        except WarrenError as e:
            response = e2b_error_for(e)
            retry_after = getattr(e, "retry_after", None)
            if retry_after:
                response.headers["Retry-After"] = str(max(1, int(retry_after)))
            return response
        except Exception:
            log.exception("E2B control API: %s %s failed", request.method, request.url.path)
            return e2b_error(500, "internal error")

    return endpoint


async def _unsupported(call: Call) -> Response:
    return not_implemented(f"{call.request.method} {call.request.url.path}")


def _r(path: str, handler: Handler, method: str) -> Route:
    return Route(path, _endpoint(handler), methods=[method])


SB = "/sandboxes/{sandbox_id}"

ROUTES = [
    _r("/v2/sandboxes", sandboxes.create_v2, "POST"),
    _r("/sandboxes", sandboxes.create_v1, "POST"),
    _r("/v2/sandboxes", sandboxes.list_v2, "GET"),
    _r("/sandboxes", sandboxes.list_v1, "GET"),
    _r(SB, sandboxes.get, "GET"),
    _r(SB, sandboxes.kill, "DELETE"),
    _r(SB + "/timeout", sandboxes.set_timeout, "POST"),
    _r(SB + "/pause", sandboxes.pause, "POST"),
    _r(SB + "/resume", sandboxes.resume, "POST"),
    _r("/v2" + SB + "/connect", sandboxes.connect, "POST"),
    _r(SB + "/connect", sandboxes.connect, "POST"),
    _r(SB + "/metrics", sandboxes.metrics, "GET"),
    _r(SB + "/network", sandboxes.update_network, "PUT"),
    _r(SB + "/snapshots", snapshots.create, "POST"),
    _r(SB + "/fork", forks.fork, "POST"),
    _r("/snapshots", snapshots.list_, "GET"),
    _r("/templates/{template_id:path}", snapshots.delete, "DELETE"),
]


def control_app(state: AppState) -> Starlette:
    app = Starlette(
        routes=[
            *ROUTES,
            # Template builds, volumes, secrets, logs, ...: 501 after authentication.
            Route("/{path:path}", _endpoint(_unsupported), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]
    )
    app.state = state
    return app
