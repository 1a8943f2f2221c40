"""E2B's error shapes, one per plane (docs/e2b.md §1.3). The status comes from the one domain
map (``cp.http_errors.status_and_code``); only the body differs.

- Control API and envd's plain HTTP routes (``/files``, ``/health``): ``{"code": <int status>,
  "message": <str>}``. The SDK's generated client reads exactly these two keys.
- envd's Connect RPCs: ``{"code": "<connect code>", "message": <str>}`` (unary), or the same
  inside the end-of-stream envelope's ``error`` (streams).
- A sandbox that is gone, unknown, or not this token's: **502** with "... was not found" in the
  message on every in-sandbox route, because the SDK sniffs that text to raise "sandbox not
  running" (a 404 there breaks ``is_running()``).
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from warren import errors
from warren.cp.http_errors import status_and_code

# Connect's codes by HTTP status, the inverse of the mapping Connect clients apply to a plain
# HTTP answer (connectrpc's table), so either reading gives the same code.
_CONNECT_BY_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    413: "resource_exhausted",
    429: "resource_exhausted",
    501: "unimplemented",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}


def e2b_error(status: int, message: str) -> JSONResponse:
    """The control API's (and envd's plain HTTP) error answer."""
    return JSONResponse({"code": status, "message": message}, status_code=status)


def e2b_error_for(exc: errors.WarrenError) -> JSONResponse:
    status, _ = status_and_code(exc)
    return e2b_error(status, exc.message)


def connect_code(status: int) -> str:
    """The Connect code for what would be HTTP ``status`` in the REST API."""
    if status in _CONNECT_BY_STATUS:
        return _CONNECT_BY_STATUS[status]
    return "internal" if status >= 500 else "unknown"


def sandbox_not_found(sandbox_id: str) -> JSONResponse:
    """What every in-sandbox route answers for a sandbox it cannot serve (see module doc)."""
    return e2b_error(502, f"The sandbox {sandbox_id} was not found")


def not_implemented(what: str) -> JSONResponse:
    """501 for an E2B feature Warren does not have (docs/e2b.md §5 lists them)."""
    return e2b_error(501, f"{what} is not supported by Warren's E2B-compatible API (see docs/e2b.md)")
