"""The Warren Python SDK, shaped like E2B's.

::

    from warren import Sandbox

    with Sandbox.create() as sbx:                       # WARREN_URL / WARREN_API_KEY
        r = sbx.commands.run("echo hello")             # /bin/sh -c, 60 s limit
        sbx.files.write("/tmp/a.txt", "hi")
        print(r.stdout, sbx.files.read("/tmp/a.txt"))

``AsyncSandbox`` has the same methods as coroutines (the examples in the docstrings show the
sync form; with ``AsyncSandbox``, ``await`` the same call). Every duration is in seconds.

Besides the sandbox API, the helpers the ``warren`` CLI shares with the SDK are public here:
:func:`error_from_response` (an API error answer as a typed exception), :func:`error_body`
(what of its body is read), :class:`PageCursors` (how far a listing follows a server's pages),
:func:`config_path`
and :func:`load_config_file` (the file ``warren login`` writes) and :data:`DEFAULT_URL`.
"""

from __future__ import annotations

import warnings
from typing import Any

from warren.sdk._commands import AsyncCommandHandle, AsyncCommands, CommandHandle, Commands
from warren.sdk._config import DEFAULT_URL, ConnectionConfig, config_path, load_config_file
from warren.sdk._exceptions import (
    AuthenticationError,
    CommandExitError,
    ConflictError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    SandboxUnavailableError,
    ServerError,
    StreamError,
    WarrenError,
    WarrenTimeoutError,
    error_body,
    error_from_response,
)
from warren.sdk._files import AsyncFiles, Files
from warren.sdk._models import CommandResult, EntryInfo, MetricPoint, ProcessInfo, SandboxInfo, SnapshotInfo
from warren.sdk._pages import PageCursors
from warren.sdk._pty import AsyncPty, AsyncPtyHandle, Pty, PtyHandle
from warren.sdk._sandbox import AsyncSandbox, Sandbox
from warren.sdk._template import AsyncTemplate, AsyncTemplateBuild, Template, TemplateBuild
from warren.sdk._template_build import BuildInfo, LogChunk, TemplateBuildError, TemplateInfo, TemplateVersion
from warren.sdk._watch import AsyncWatcher, AsyncWatchHandle, FilesystemEvent, SignedUrl, Watcher, WatchHandle

__all__ = [
    "DEFAULT_URL",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncPty",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncTemplate",
    "AsyncTemplateBuild",
    "AsyncWatchHandle",
    "AsyncWatcher",
    "AuthenticationError",
    "BuildInfo",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConflictError",
    "ConnectionConfig",
    "EntryInfo",
    "Files",
    "FilesystemEvent",
    "InvalidArgumentError",
    "InvalidStateError",
    "LogChunk",
    "MetricPoint",
    "NotFoundError",
    "PageCursors",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessInfo",
    "Pty",
    "PtyHandle",
    "RateLimitedError",
    "Sandbox",
    "SandboxInfo",
    "SandboxUnavailableError",
    "ServerError",
    "SignedUrl",
    "SnapshotInfo",
    "StreamError",
    "Template",
    "TemplateBuild",
    "TemplateBuildError",
    "TemplateInfo",
    "TemplateVersion",
    "WarrenError",
    "WarrenTimeoutError",
    "WatchHandle",
    "Watcher",
    "config_path",
    "error_body",
    "error_from_response",
    "load_config_file",
]

# Old name -> current name. Each old name still works for one release (it goes in 0.2), with a
# DeprecationWarning; it is left out of __all__ so `import *` no longer shadows a builtin.
DEPRECATED_ALIASES: dict[str, str] = {"TimeoutError": "WarrenTimeoutError"}


def deprecated_alias(module: str, name: str) -> Any:
    """The object an old name stands for, with a DeprecationWarning pointing at the caller of
    ``module``'s ``__getattr__`` (this function's caller's caller)."""
    new = DEPRECATED_ALIASES[name]
    warnings.warn(
        f"{module}.{name} is deprecated and will be removed in warren 0.2; use {module}.{new} "
        f"(it is still a subclass of the builtin {name})",
        DeprecationWarning,
        stacklevel=3,
    )
    return globals()[new]


def __getattr__(name: str) -> Any:
    if name in DEPRECATED_ALIASES:
        return deprecated_alias("warren.sdk", name)
    raise AttributeError(f"module 'warren.sdk' has no attribute {name!r}")
