"""``warren proxy``: the preview proxy alone (docs/networking.md §3), the same code the control
plane mounts, so preview traffic scales apart from the API. It reads the CP's database and uses
its CA to reach agents; put it behind the wildcard DNS of WARREN_PREVIEW_DOMAIN."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from warren import logs
from warren.cli.cp_settings import server_settings, websocket_options
from warren.config import HTTP_KEEP_ALIVE_S
from warren.logs import LogFormat

err = Console(stderr=True, highlight=False)


def proxy_command(
    listen: Annotated[
        str | None, typer.Option(help="host:port to serve on (default WARREN_PROXY_LISTEN, 127.0.0.1:8001).")
    ] = None,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-* headers (behind a load balancer).")
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(envvar="WARREN_LOG_FORMAT", help="Log lines as text, or json (one object per line)."),
    ] = "text",
) -> None:
    """Serve preview URLs of sandbox ports (by path and by host name).

    Needs WARREN_DATABASE_URL, WARREN_JWT_SECRET (the CP's) and the CP's CA (WARREN_CA_CERT /
    WARREN_CA_KEY, or WARREN_HOME).
    """
    import uvicorn

    from warren.cp.connection_guard import http_options
    from warren.cp.observe import ObserveMiddleware
    from warren.cp.proxy.standalone import standalone_app

    settings = server_settings()
    host, _, port = (listen or settings.proxy_listen).rpartition(":")
    if not host or not port.isdigit():
        err.print("[red]--listen must be host:port[/red]")
        raise typer.Exit(2)
    logs.setup_logging("INFO", log_format)
    # Request ids (X-Request-Id) and their log lines, as on the CP (cp/observe.py).
    app = ObserveMiddleware(standalone_app(settings))
    uvicorn.run(
        app, host=host.strip("[]"), port=int(port), proxy_headers=proxy_headers,
        timeout_graceful_shutdown=10, timeout_keep_alive=HTTP_KEEP_ALIVE_S, log_level="info",
        **websocket_options(settings), **http_options(settings),
        log_config=logs.uvicorn_log_config(log_format),
    )  # fmt: skip
