"""One envd request's context (docs/e2b.md §3): the sandbox it is for, the caller's rights (the
sandbox's access token), the user it runs as, and the Connect deadline."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from starlette.requests import Request

from warren.cp.services.authn import throttle
from warren.cp.services.context import AuthContext
from warren.cp.services.envd_access import sandbox_access
from warren.cp.services.sandboxes import Found
from warren.cp.state import AppState, state_of
from warren.errors import InvalidRequest

MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000  # a Connect-Timeout-Ms beyond a week is refused


@dataclass(frozen=True)
class EnvdCall:
    state: AppState
    request: Request
    sandbox_id: str
    ctx: AuthContext  # reaches this one sandbox (AuthContext.only_sandbox)
    sandbox: Found
    # The user named by ``Authorization: Basic base64("<user>:")`` (or ``?username=`` on /files);
    # None: the sandbox's default user (E2B's `user` where the template has it).
    user: str | None
    # Connect-Timeout-Ms: the call's deadline, which for a process is its lifetime. None: none.
    timeout_ms: int | None


def _basic_user(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("malformed Basic authorization") from None
    user = decoded.partition(":")[0]
    return user or None


def _timeout_ms(request: Request) -> int | None:
    raw = request.headers.get("connect-timeout-ms")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise InvalidRequest("Connect-Timeout-Ms must be a positive integer of at most 12 digits")
    value = int(raw)
    return min(value, MAX_TIMEOUT_MS) if value > 0 else None


async def envd_call(request: Request) -> EnvdCall:
    """Authenticate an envd request (``scope["e2b"]`` set by the listener's routing) and read
    its context. Raises Unauthorized, NotFound (the sandbox is gone: E2B's 502),
    InvalidRequest or TooManyRequests (the team's request rate)."""
    state = state_of(request)
    sandbox_id, _port = request.scope["e2b"]
    ctx, found = await sandbox_access(
        state.engine, state.settings.jwt_secret, sandbox_id, request.headers.get("x-access-token")
    )
    throttle(state.team_limiter, ctx)  # the team's request rate, as its REST calls
    user = request.query_params.get("username") or _basic_user(request)
    return EnvdCall(state, request, sandbox_id, ctx, found, user, _timeout_ms(request))
