"""The guest's error kind on a failed agent RPC, as data: both ends' part in one place.

The agent (``agent/rpc_errors.py:abort``) sends a guest error's kind as the trailing metadata
:data:`METADATA_KEY` of the call it ends, beside the gRPC code it maps the kind to; the CP's
interceptor (``cp/hosts/agent_client.py:translate``) reads it back with :func:`read` into
``AgentError.guest_kind``. A caller that must tell two guest errors of one gRPC code apart
(E2B's ``SendInput`` to a process or terminal that has exited, :data:`EXITED`, against any
other refused input) asks the kind, never the message's words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Lower case, as gRPC requires of metadata keys.
METADATA_KEY = "warren-guest-kind"
# The process or terminal has exited: it takes no input (gRPC INVALID_ARGUMENT).
EXITED = "exited"
# What the CP takes as a kind: a BYOC host's agent is its tenant's and sends what it likes.
_KIND = re.compile(r"[a-z_]{1,32}")


def read(metadata: Iterable[Any] | None) -> str | None:
    """The guest kind a call's trailing metadata (its ``(key, value)`` pairs) carries, or None
    (none sent: not a guest error, or an agent from before the kind was sent; or not a kind's
    form)."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            return value if isinstance(value, str) and _KIND.fullmatch(value) else None
    return None


__all__ = ["EXITED", "METADATA_KEY", "read"]
