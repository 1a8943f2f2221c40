"""The settings a control-plane server command starts from (``warren cp``, ``warren proxy``)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from warren.config import Settings

__all__ = ["server_settings", "websocket_options"]

err = Console(stderr=True, highlight=False)


def server_settings() -> Settings:
    """The CP's settings from the environment; without a database URL or with a JWT secret
    shorter than ``Settings.require_jwt_secret`` allows, the command stops (exit 1) naming the
    variable, before it binds a port."""
    settings = Settings()
    if not settings.database_url:
        err.print(
            "[red]WARREN_DATABASE_URL is not set[/red] (the control plane's database, "
            "postgresql://user:password@host:5432/db)."
        )
        raise typer.Exit(1)
    try:
        settings.require_jwt_secret()
    except RuntimeError as e:
        err.print(f"[red]{e}[/red] (the same on every control plane replica and proxy).")
        raise typer.Exit(1) from None
    return settings


def websocket_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's WebSocket options for a CP or proxy server. The sans-I/O implementation is
    named rather than picked by uvicorn: it reads one message ahead of the app and then stops
    reading the socket until the app takes it (``ws_max_queue`` is the other implementation's
    read-ahead, 32 messages by default), and it refuses a message over ``ws_max_size`` from its
    frame header, before holding it: close 1009 for that connection alone. It is used as
    ``ws_guard.GuardedWebSocketProtocol``, which bounds what else a client makes it read and hold."""
    from warren.cp.ws_guard import GuardedWebSocketProtocol  # the server's, not the CLI's

    return {"ws": GuardedWebSocketProtocol, "ws_max_size": settings.ws_max_message, "ws_max_queue": 1}
