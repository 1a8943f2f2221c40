"""What one request carries across layers without being passed by hand: its id and the
client's address, in context variables.

The control plane's middleware (``cp/observe.py``) sets both for every HTTP request; the agent's
RPC interceptor sets the id from the ``x-request-id`` gRPC metadata. Log lines
(``warren.logs``) and audit records (``cp/services/audit.py``) read them. Standard library only:
the agent and the CP share it.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

# An incoming X-Request-Id is kept only if it is short and plain (docs/security.md): it ends
# up in log lines, response headers and gRPC metadata, so no control characters, spaces or
# quotes, and at most this many characters. Anything else is replaced by a fresh id.
MAX_REQUEST_ID = 128
_ALLOWED = re.compile(rf"[A-Za-z0-9._:@+=/-]{{1,{MAX_REQUEST_ID}}}")
# The gRPC metadata key the CP sends the id under (lower case, as gRPC requires).
GRPC_METADATA_KEY = "x-request-id"

request_id: ContextVar[str | None] = ContextVar("warren_request_id", default=None)
client_ip: ContextVar[str | None] = ContextVar("warren_client_ip", default=None)
# Who the request authenticated as: a box the CP's middleware puts in place and authentication
# fills (a list, so a value set in a copied context still reaches the middleware), for the
# audit record of a state-changing call that fails.
actor_box: ContextVar[list[object] | None] = ContextVar("warren_actor_box", default=None)


def remember_actor(actor: object) -> None:
    box = actor_box.get()
    if box is not None:
        box[:] = [actor]


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(raw: str | bytes | None) -> str:
    """The caller's id when it follows the rules above, else a new one."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return new_request_id()
    if raw and _ALLOWED.fullmatch(raw):
        return raw
    return new_request_id()


__all__ = [
    "GRPC_METADATA_KEY",
    "MAX_REQUEST_ID",
    "accept_request_id",
    "actor_box",
    "client_ip",
    "new_request_id",
    "remember_actor",
    "request_id",
]
