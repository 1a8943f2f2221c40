"""Exceptions raised by the Warren SDK.

Every error the API answers carries the envelope ``{"error": {"code", "message"}}``; the SDK
turns it into one of these, keeping ``code``, ``message`` and ``status``::

    WarrenError
    ├── InvalidArgumentError        400
    ├── AuthenticationError         401
    ├── PermissionDeniedError       403
    ├── NotFoundError               404
    ├── ConflictError               409
    │   └── InvalidStateError       409 invalid_state (e.g. exec in a paused sandbox)
    ├── PayloadTooLargeError        413 (``too_large``; ``output_too_large``: a ``commands.run``
    │                               printed more than the unary cap, use ``on_stdout`` streaming)
    ├── ServerError                 5xx (also 503 ``server_busy``: the control plane is holding
    │   │                           as much unary data as it may; retry after ``Retry-After``)
    │   └── SandboxUnavailableError 502/503 (the sandbox's host could not be reached)
    ├── WarrenTimeoutError          a command or an HTTP request ran out of time (also a
    │                               builtin ``TimeoutError``; ``warren.TimeoutError`` is its
    │                               deprecated old name)
    ├── StreamError                 a stream (file or exec) broke before its end
    └── CommandExitError            ``commands.run(..., check=True)`` saw a non-zero exit code
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = [
    "AuthenticationError",
    "CommandExitError",
    "ConflictError",
    "InvalidArgumentError",
    "InvalidStateError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SandboxUnavailableError",
    "ServerError",
    "StreamError",
    "WarrenError",
    "WarrenTimeoutError",
    "error_from_response",
]


class WarrenError(Exception):
    """Base class of every SDK error. ``code`` is the API's machine code (e.g. ``not_found``)."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.extra: dict[str, Any] = extra

    def __str__(self) -> str:
        where = f"{self.status} " if self.status else ""
        return f"[{where}{self.code}] {self.message}"


class InvalidArgumentError(WarrenError):
    pass


class AuthenticationError(WarrenError):
    pass


class PermissionDeniedError(WarrenError):
    pass


class NotFoundError(WarrenError):
    pass


class ConflictError(WarrenError):
    pass


class InvalidStateError(ConflictError):
    pass


class PayloadTooLargeError(WarrenError):
    pass


class RateLimitedError(WarrenError):
    """429: a rate limit (``code == "rate_limited"``: retry later) or a team quota
    (``code == "quota_exceeded"``, with ``quota``, ``limit`` and ``in_use``: free something or
    ask an admin to raise it)."""


class ServerError(WarrenError):
    pass


class SandboxUnavailableError(ServerError):
    pass


# Not called TimeoutError: that would shadow the builtin wherever it is imported. It subclasses
# the builtin, so a plain ``except TimeoutError`` catches it too.
class WarrenTimeoutError(WarrenError, TimeoutError):
    """A command's ``timeout`` or an HTTP ``request_timeout`` ran out."""


class StreamError(WarrenError):
    pass


class CommandExitError(WarrenError):
    """A command run with ``check=True`` exited non-zero; the result is attached."""

    def __init__(self, result: Any) -> None:
        super().__init__(
            f"command exited with code {result.exit_code}: {result.stderr[-500:]!s}",
            code="command_exit",
        )
        self.result = result
        self.exit_code: int = result.exit_code
        self.stdout: str = result.stdout
        self.stderr: str = result.stderr


_BY_STATUS: dict[int, type[WarrenError]] = {
    400: InvalidArgumentError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
}


# Of an error answer, what is read: its JSON envelope is ~200 bytes, and a server's body that never
# ends is not the client's to hold (session 37: a 512 MiB one grew the CLI by 1 GiB).
ERROR_BODY_MAX = 64 << 10


def error_body(chunks: Iterator[bytes]) -> bytes:
    """The first :data:`ERROR_BODY_MAX` bytes of an error answer's body (the rest is not read)."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) >= ERROR_BODY_MAX:
            break
    return bytes(body[:ERROR_BODY_MAX])


async def aerror_body(chunks: AsyncIterator[bytes]) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) >= ERROR_BODY_MAX:
            break
    return bytes(body[:ERROR_BODY_MAX])


def error_from_response(status: int, body: bytes) -> WarrenError:
    """The typed error for an HTTP error answer (envelope or not)."""
    code, message, extra = _parse_envelope(body)
    if not code:
        code = "http_error"
    if not message:
        message = f"HTTP {status}"
    cls: type[WarrenError]
    if extra.get("reason") == "timeout":
        # A command killed at its time limit (the API answers 502 with this marker).
        cls = WarrenTimeoutError
    elif status == 409 and code == "invalid_state":
        cls = InvalidStateError
    elif status == 503 and code == "server_busy":
        cls = ServerError  # the control plane, not the sandbox's host
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status in (502, 503):
        cls = SandboxUnavailableError
    elif status == 504:
        cls = WarrenTimeoutError
    elif status >= 500:
        cls = ServerError
    else:
        cls = WarrenError
    return cls(message, code=code, status=status, **extra)


def _parse_envelope(body: bytes) -> tuple[str, str, dict[str, Any]]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "", body[:200].decode("utf-8", "replace").strip(), {}
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return "", "", {}
    extra = {k: v for k, v in err.items() if k not in ("code", "message")}
    return str(err.get("code", "")), str(err.get("message", "")), extra
