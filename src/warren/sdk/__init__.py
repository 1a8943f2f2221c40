"""The Warren Python SDK, shaped like E2B's.

::

    from warren import Sandbox

    with Sandbox.create() as sbx:                       # WARREN_URL / WARREN_API_KEY
        r = sbx.commands.run("echo hello")             # /bin/sh -c, 60 s limit
        sbx.files.write("/tmp/a.txt", "hi")
        print(r.stdout, sbx.files.read("/tmp/a.txt"))

``AsyncSandbox`` has the same methods as coroutines. Every duration is in seconds.
"""

from __future__ import annotations

from warren.sdk._commands import AsyncCommandHandle, AsyncCommands, CommandHandle, Commands
from warren.sdk._config import ConnectionConfig
from warren.sdk._exceptions import (
    AuthenticationError,
    CommandExitError,
    ConflictError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SandboxUnavailableError,
    ServerError,
    StreamError,
    TimeoutError,
    WarrenError,
)
from warren.sdk._files import AsyncFiles, Files
from warren.sdk._models import CommandResult, EntryInfo, MetricPoint, ProcessInfo, SandboxInfo, SnapshotInfo
from warren.sdk._sandbox import AsyncSandbox, Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncSandbox",
    "AuthenticationError",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConflictError",
    "ConnectionConfig",
    "EntryInfo",
    "Files",
    "InvalidArgumentError",
    "InvalidStateError",
    "MetricPoint",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessInfo",
    "Sandbox",
    "SandboxInfo",
    "SandboxUnavailableError",
    "ServerError",
    "SnapshotInfo",
    "StreamError",
    "TimeoutError",
    "WarrenError",
]
