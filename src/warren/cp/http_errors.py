"""THE one place where domain errors become HTTP responses (docs/spec.md §0.4/§0.5, docs/design.md §5).

Every JSON error is ``{"error": {"code": ..., "message": ..., **extra}}``. Services raise
``warren.errors`` types; FastAPI validation errors and Starlette HTTP exceptions (unknown route,
wrong method) are reshaped into the same envelope. Anything unexpected is a 500
``internal_error`` whose details go to the log, never to the client. A browser navigating to a
page outside the API (``Accept: text/html``) gets the same status and message as an HTML page
instead, when the app was given one (the dashboard's). A page's own script that asks for HTML
(the sandbox list's refresh, a fragment) says so with ``X-Requested-With`` and gets the
envelope: it shows the message in a toast, and an error page gave it nothing to show.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from warren import errors

log = logging.getLogger("warren.cp.http")


class ErrorBody(BaseModel):
    # Extra keys (e.g. ``sandbox_ids`` on a refused host delete) ride along in the object.
    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


_DESCRIPTIONS = {
    400: "Invalid request (bad JSON, wrong types, unknown fields, invalid IDs)",
    401: "Missing or invalid credentials",
    403: "Authenticated but not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Request body or result too large",
    429: "A quota (quota_exceeded) or a rate limit (rate_limited, with Retry-After) refused it",
    500: "Internal error",
    502: "A host agent failed",
    503: "No host with room (no_capacity, no_hosts_available), host unreachable, or busy",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` dict documenting error statuses with the shared envelope schema."""
    return {s: {"model": ErrorEnvelope, "description": _DESCRIPTIONS.get(s, "Error")} for s in statuses}


# Status for each domain error class; the most specific class wins (checked via the MRO).
_STATUS: dict[type[errors.WarrenError], int] = {
    errors.InvalidRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InvalidState: 409,
    errors.PayloadTooLarge: 413,
    errors.TooManyRequests: 429,
    errors.ServiceUnavailable: 503,
    errors.InternalError: 500,
}

_AGENT_RPC_MAP = {
    "NOT_FOUND": (404, "not_found"),
    "INVALID_ARGUMENT": (400, "invalid_request"),
    "FAILED_PRECONDITION": (409, "conflict"),
    # The sandbox's own filesystem refused (read-only path, EACCES, EPERM): the client asked
    # for something the sandbox does not allow, not a host failure.
    "PERMISSION_DENIED": (403, "permission_denied"),
    # A bound: a guest answer past the agent's caps, or a full sandbox disk.
    "RESOURCE_EXHAUSTED": (413, "too_large"),
}


def status_and_code(exc: errors.WarrenError) -> tuple[int, str]:
    """The HTTP status and machine code for a domain error."""
    if isinstance(exc, errors.AgentError):
        # docs/spec.md §0.5 rule 1: the RPC code decides; a raise site cannot override it.
        return _AGENT_RPC_MAP.get(exc.rpc_code, (502, "agent_error"))
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)  # type: ignore[arg-type]
        if status is not None:
            return status, exc.code
    return 500, "internal_error"


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    for k, v in extra.items():
        if k not in body:
            body[k] = v
    return JSONResponse({"error": body}, status_code=status)


# SQLSTATEs (class 22, data exception) that only bad input can cause: 22000 is asyncpg refusing
# to encode an argument (e.g. an int past int32), 22001 too long, 22003 numeric out of range,
# 22021 NUL or invalid UTF-8 in text, 22P05 untranslatable character.
_BAD_INPUT_SQLSTATES = frozenset({"22000", "22001", "22003", "22021", "22P05"})


def _is_bad_input_data(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    return getattr(exc.orig, "sqlstate", None) in _BAD_INPUT_SQLSTATES


# The database went away (restarted, failed over, shut down): its connections refused, reset or
# closed under the statement; or it is out of a resource (SQLSTATE class 53: no connection slot
# left, max_connections or the role's limit; its memory or disk). Like an exhausted pool, a
# passing condition: 503 database_busy (a new connection refused for want of slots was a 500).
_DB_GONE = (
    asyncpg.InsufficientResourcesError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def _is_database_gone(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    for _ in range(5):  # the driver's error, as SQLAlchemy wrapped it
        if seen is None:
            return False
        if isinstance(seen, _DB_GONE):
            return True
        if isinstance(seen, asyncpg.InterfaceError) and "connection" in str(seen) and "closed" in str(seen):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def response_for(exc: BaseException) -> JSONResponse:
    """Map any exception to the envelope (used by handlers and by WebSocket/stream code)."""
    if isinstance(exc, errors.WarrenError):
        status, code = status_and_code(exc)
        # A 500 whose raise site chose a specific code (e.g. ``agent_error``, ``db_error``) has a
        # message written for the client; only generic internal errors are masked.
        if (
            status >= 500
            and code == "internal_error"
            and not isinstance(exc, errors.AgentError | errors.ServiceUnavailable)
        ):
            log.error("internal error: %s", exc, exc_info=exc)
            return error_response(500, "internal_error", "internal error")
        resp = error_response(status, code, exc.message, **exc.extra)
        retry_after = getattr(exc, "retry_after", None)  # TooManyRequests, a busy 503
        if retry_after is not None:
            # Whole seconds, rounded up: a client that waits exactly this long gets through.
            resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return resp
    if _is_bad_input_data(exc):
        # A value PostgreSQL cannot hold (NUL in text, an integer past int32, ...) that no model
        # caught, e.g. in a path parameter: the client's input is wrong, not the server.
        log.warning("request data refused by the database: %s", exc)
        return error_response(400, "invalid_request", "invalid value (out of range or bad characters)")
    if _is_database_gone(exc):
        log.warning("database unavailable: %r", exc)
        return error_response(
            503, "database_busy", "the control plane's database is unavailable; retry shortly"
        )
    if isinstance(exc, PoolTimeout):
        # Every pooled connection stayed busy for the whole pool timeout: overload, not a bug.
        log.warning("no database connection free: %s", exc)
        return error_response(
            503, "database_busy", "the control plane's database connections are all busy; retry shortly"
        )
    log.error("unhandled error: %r", exc, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def _validation_message(exc: RequestValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return "invalid request"
    first = errs[0]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return "invalid JSON body"
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc)
    if kind == "extra_forbidden":
        return f"unknown field: {where}" if where else "unknown field"
    if kind == "missing":
        if where:
            return f"{where} is required"
        return "request body is required"
    if kind in ("model_attributes_type", "dict_type") and not where:
        return "invalid JSON body: expected a JSON object"
    msg = str(first.get("msg", "invalid value"))
    return f"invalid {where}: {msg}" if where else f"invalid request: {msg}"


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}


# (request, status, message) -> the HTML page for a browser.
HtmlErrorPage = Callable[[Request, int, str], Response]

# Always JSON, whatever the client accepts.
_API_PATHS = ("/v1", "/openapi", "/docs", "/healthz")


def _wants_html(request: Request) -> bool:
    return (
        request.method in ("GET", "HEAD")
        and "text/html" in request.headers.get("accept", "")
        and "x-requested-with" not in request.headers  # a script's request, not a navigation
        and not request.url.path.startswith(_API_PATHS)
    )


def install_error_handlers(app: FastAPI, *, html_page: HtmlErrorPage | None = None) -> None:
    """``html_page`` renders errors for browsers navigating to pages (see the module doc)."""

    def answer(
        handler: Callable[[Request, Exception], Awaitable[JSONResponse]],
    ) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            resp = await handler(request, exc)
            if html_page is None or not _wants_html(request):
                return resp
            # The envelope is the one mapping; the page shows its status and message.
            message = json.loads(bytes(resp.body))["error"]["message"]
            page = html_page(request, resp.status_code, message)
            if "retry-after" in resp.headers:  # a rate limit's: the page says when, too
                page.headers["Retry-After"] = resp.headers["retry-after"]
            return page

        return handle

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, "invalid_request", _validation_message(exc))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "invalid_request")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if status == 400 and message == "There was an error parsing the body":
            message = "invalid JSON body"
        elif status == 404 and message == "Not Found":
            message = "route not found"
        elif status == 405:
            message = "method not allowed"
        elif status >= 500:
            message = "internal error"
        resp = error_response(status, code, message)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    async def on_exception(_: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    app.add_exception_handler(errors.WarrenError, answer(on_exception))
    app.add_exception_handler(RequestValidationError, answer(on_validation))
    # Expected failures with an answer of their own (503 database_busy, 400 for data PostgreSQL
    # refuses): handled here rather than by the catch-all below, which Starlette runs in its
    # outermost layer and then re-raises, so the server would log a traceback for each.
    app.add_exception_handler(PoolTimeout, answer(on_exception))
    app.add_exception_handler(DBAPIError, answer(on_exception))
    # The database gone (raw driver errors, not wrapped by SQLAlchemy): 503, and the
    # connection kept (the catch-all's re-raise makes the server drop it).
    for gone in (*_DB_GONE, asyncpg.InterfaceError):
        app.add_exception_handler(gone, answer(on_exception))
    app.add_exception_handler(StarletteHTTPException, answer(on_http))
    app.add_exception_handler(Exception, answer(on_exception))
