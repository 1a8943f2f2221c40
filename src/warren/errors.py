"""The domain error hierarchy.

Services raise these; ``warren.cp.http_errors`` maps them to HTTP status codes and the JSON
envelope ``{"error": {"code", "message", ...extra}}`` in exactly one place. Each class carries
a default machine ``code``; a raise site may pass a more specific one (e.g. ``email_taken``).
"""

from __future__ import annotations

from typing import Any


class WarrenError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra: dict[str, Any] = extra


class InvalidRequest(WarrenError):
    code = "invalid_request"


class Unauthorized(WarrenError):
    code = "unauthorized"


class Forbidden(WarrenError):
    code = "forbidden"


class NotFound(WarrenError):
    code = "not_found"


class Conflict(WarrenError):
    code = "conflict"


class InvalidState(Conflict):
    """The resource exists but is in the wrong status for the operation (409)."""

    code = "invalid_state"


class PayloadTooLarge(WarrenError):
    code = "too_large"


class TooManyRequests(WarrenError):
    """A quota or a rate limit says no (429). ``retry_after`` (seconds), when given, becomes
    the ``Retry-After`` header: rate limits pass it, quotas do not (waiting does not help)."""

    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None, **extra: Any
    ):
        super().__init__(message, code=code, **extra)
        self.retry_after = retry_after


class ServiceUnavailable(WarrenError):
    """No host can take the work, or the sandbox's host is not reachable (503)."""

    code = "service_unavailable"


class AgentError(WarrenError):
    """A host agent RPC failed. ``rpc_code`` is the gRPC status name (e.g. ``NOT_FOUND``).

    Mapped per docs/spec.md §0.5: NOT_FOUND → 404, INVALID_ARGUMENT → 400, FAILED_PRECONDITION → 409,
    anything else (transport, INTERNAL, UNAVAILABLE, …) → 502 ``agent_error``.

    ``guest_kind`` is the guest's error kind when the agent sent one (``warren/rpc/guest_kind.py``,
    e.g. ``exited``), else None: what a caller asks to tell errors of one code apart, never the
    message's words.
    """

    code = "agent_error"

    def __init__(
        self,
        message: str,
        *,
        rpc_code: str = "UNKNOWN",
        guest_kind: str | None = None,
        code: str | None = None,
        **extra: Any,
    ):
        super().__init__(message, code=code, **extra)
        self.rpc_code = rpc_code
        self.guest_kind = guest_kind

    @property
    def is_not_found(self) -> bool:
        return self.rpc_code == "NOT_FOUND"


class InternalError(WarrenError):
    code = "internal_error"
