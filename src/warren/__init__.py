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
        AsyncTemplate,
        AuthenticationError,
        CommandExitError,
        ConflictError,
        InvalidArgumentError,
        InvalidStateError,
        NotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        RateLimitedError,
        Sandbox,
        SandboxUnavailableError,
        ServerError,
        StreamError,
        Template,
        TemplateBuildError,
        WarrenError,
        WarrenTimeoutError,
    )


__all__ = [
    "AsyncSandbox",
    "AsyncTemplate",
    "AuthenticationError",
    "CommandExitError",
    "ConflictError",
    "InvalidArgumentError",
    "InvalidStateError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "Sandbox",
    "SandboxUnavailableError",
    "ServerError",
    "StreamError",
    "Template",
    "TemplateBuildError",
    "WarrenError",
    "WarrenTimeoutError",
]


# Old SDK names kept for one release, with a DeprecationWarning (warren.sdk.DEPRECATED_ALIASES).
# Listed here too: asking warren.sdk would load it on every `from warren import <submodule>`.
_DEPRECATED = ("TimeoutError",)


def __getattr__(name: str) -> Any:
    # Only the names above; anything else (a typo, a submodule not imported yet) is an
    # AttributeError as usual. import_module, not `from warren import sdk`: that would ask this
    # very function for `sdk` again.
    if name in __all__:
        return getattr(importlib.import_module("warren.sdk"), name)
    if name in _DEPRECATED:
        return importlib.import_module("warren.sdk").deprecated_alias("warren", name)
    raise AttributeError(f"module 'warren' has no attribute {name!r}")
