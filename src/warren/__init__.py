"""Warren: a self-hosted, multi-host sandbox platform.

The public Python SDK (``warren.sdk``) is re-exported here lazily, so that ``import warren``
stays cheap for the control plane and the host agent::

    from warren import NotFoundError, Sandbox

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hi").stdout)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from warren.sdk import (
        AsyncSandbox,
        AuthenticationError,
        CommandExitError,
        ConflictError,
        InvalidArgumentError,
        InvalidStateError,
        NotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        Sandbox,
        SandboxUnavailableError,
        ServerError,
        StreamError,
        TimeoutError,
        WarrenError,
    )


__all__ = [
    "AsyncSandbox",
    "AuthenticationError",
    "CommandExitError",
    "ConflictError",
    "InvalidArgumentError",
    "InvalidStateError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Sandbox",
    "SandboxUnavailableError",
    "ServerError",
    "StreamError",
    "TimeoutError",
    "WarrenError",
]


def __getattr__(name: str) -> Any:
    # Only the names above; anything else (a typo, a submodule not imported yet) is an
    # AttributeError as usual. import_module, not `from warren import sdk`: that would ask this
    # very function for `sdk` again.
    if name in __all__:
        return getattr(importlib.import_module("warren.sdk"), name)
    raise AttributeError(f"module 'warren' has no attribute {name!r}")
