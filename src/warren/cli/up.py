"""``warren up`` (everything on one machine) and ``warren cp`` (the control plane alone).

``warren up`` runs named children under a :class:`~warren.cli.supervisor.Supervisor`, started
in order and stopped in reverse order:

    postgres   the embedded PostgreSQL (skipped when WARREN_DATABASE_URL is set)
    cp         ``warren cp`` as a child process, serving the API and the dashboard
    agent      the local host agent, registered to that CP (``warren.cli.local_agent``)

The agent has a restart policy: when it crashes it is started again after a growing delay
(``event=agent_restarted exit_code=… attempt=…``), so the platform outlives an agent crash and
the agent re-adopts its sandboxes; after repeated crashes soon after starting the supervisor
gives up on it (``event=agent_gave_up``) and keeps the rest running. Any other child dying on
its own stops the others, and ``warren up`` exits non-zero.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from warren import logs
from warren.cli.cp_settings import server_settings, websocket_options
from warren.cli.home import HomeOpt, load_or_create_secret, prepare_home
from warren.cli.supervisor import ChildFailed, ProcessChild, Stopped, Supervisor
from warren.config import HTTP_KEEP_ALIVE_S, Settings, default_home
from warren.cp.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, port_is_free
from warren.logs import LogFormat

log = logging.getLogger("warren.up")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

HostOpt = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(envvar="WARREN_LOG_FORMAT", help="Log lines as text, or json (one object per line)."),
]
PortOpt = Annotated[int, typer.Option(help="TCP port of the HTTP API and dashboard.")]
E2BPortOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=65535,
        help="TCP port of the E2B-compatible API (docs/e2b.md; E2B's SDK with E2B_API_URL and "
        "E2B_SANDBOX_URL set to http://HOST:PORT). 0 turns it off.",
    ),
]


# ------------------------------------------------------------------------------- children


class PostgresChild:
    """The embedded PostgreSQL server (already a child process of ours once started)."""

    def __init__(self, pg: EmbeddedPostgres, name: str = "postgres") -> None:
        self.name = name
        self.pg = pg

    def start(self, supervisor: Supervisor) -> None:
        self.pg.start()

    def poll(self) -> int | None:
        proc = self.pg.process
        return None if proc is None else proc.poll()

    def stop(self) -> None:
        self.pg.stop()


# ------------------------------------------------------------------------------- helpers


def _client_host(host: str) -> str:
    """Where a local client reaches a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _base_url(host: str, port: int) -> str:
    h = _client_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def _healthy(base_url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _print_banner(
    base_url: str, e2b_url: str | None, home: Path | None, embedded: bool, elapsed: float
) -> None:
    body = '\'{"email":"you@example.com","password":"correct-horse","name":"You"}\''
    json_h = "-H 'content-type: application/json'"
    lines = [
        f"[bold green]Warren is up[/bold green] at [bold]{base_url}[/bold]  (ready in {elapsed:.1f}s)",
        "",
        f"  Dashboard   {base_url}/  (sign up or log in in the browser)",
        f"  API docs    {base_url}/docs",
        f"  Sign up     curl -s {base_url}/v1/auth/signup {json_h} -d {body}",
        f'  Log in      curl -s {base_url}/v1/auth/login {json_h} -d \'{{"email":"…","password":"…"}}\'',
        "  Make admin  warren admin grant you@example.com",
    ]
    if e2b_url is not None:
        lines.append(f"  E2B SDK     E2B_API_URL={e2b_url} E2B_SANDBOX_URL={e2b_url} E2B_API_KEY=wrn_…")
    if embedded and home is not None:
        lines.append(f"  Data        {home}")
    lines += ["", "Press Ctrl-C to stop."]
    # soft_wrap: long curl lines stay copy-pasteable instead of being broken at the terminal width.
    out.print("\n" + "\n".join(lines) + "\n", soft_wrap=True)


def _pools_line(pools: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['template']} {p['ready']}/{p['target']} ready" for p in pools)


def _watch_pools(db_url: str, home_dir: Path, stop: threading.Event) -> None:
    """Print the local agent's warm pools (what its heartbeats report, ready / target) when it
    first reports them and again once every pool is full; then stop watching."""
    import asyncio
    import json

    import asyncpg

    from warren import ids

    async def watch() -> None:
        creds = home_dir / "agent" / "host-credentials.json"
        said = ""
        conn = None
        try:
            while not stop.is_set():
                await asyncio.sleep(1)
                if not creds.exists():
                    continue
                if conn is None:
                    conn = await asyncpg.connect(db_url)
                host = ids.parse_id(ids.Kind.HOST, json.loads(creds.read_text())["host_id"])
                raw = await conn.fetchval("SELECT warm_pools FROM hosts WHERE id = $1", host)
                pools = json.loads(raw) if isinstance(raw, str) else raw
                if not pools:
                    continue
                full = all(p["ready"] >= p["target"] for p in pools)
                if not said or (full and said != "full"):
                    state = "full" if full else "filling"
                    out.print(f"  Warm pools  {_pools_line(pools)} ({state}; GET /v1/hosts shows them)")
                    said = "full" if full else "filling"
                if full:
                    return
        finally:
            if conn is not None:
                await conn.close()

    try:
        asyncio.run(watch())
    except Exception as e:  # a report only: never a reason to stop the platform
        log.warning("watching the warm pools failed: %s", e)


# ------------------------------------------------------------------------------- commands


def up_command(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    e2b_port: E2BPortOpt = 3000,
    home: HomeOpt = None,
    agent: Annotated[
        bool, typer.Option("--agent/--no-agent", help="Also run a host agent on this machine (needs root).")
    ] = True,
    log_format: LogFormatOpt = "text",
    warm_pool: Annotated[
        str | None,
        typer.Option(
            help="the local agent's warm pools, TEMPLATE[@RUNTIME]=SIZE: minimal=8 (its default "
            "runtime, crun where it works), minimal@runc=2; see warren agent"
        ),
    ] = None,
) -> None:
    """Run Warren on this machine: embedded PostgreSQL, migrations, control plane, host agent.

    As root, a local host agent registered to this control plane runs sandboxes here too.
    Data persists in --home. With WARREN_DATABASE_URL set, that PostgreSQL is used instead of
    the embedded one. Ctrl-C (or SIGTERM) stops everything.
    """
    logs.setup_logging(logging.INFO, log_format)  # httpx quiet: not one line per readiness probe
    os.environ["WARREN_LOG_FORMAT"] = log_format  # the children (cp, agent) log the same way
    t0 = time.monotonic()
    home_dir = prepare_home(home or default_home())
    _check_ports_free(host, port, e2b_port)

    sup = Supervisor()
    sup.install_signal_handlers()
    code = 1
    watching = threading.Event()  # set on the way out: the warm-pool report stops
    try:
        db_url, embedded = _start_database(sup, home_dir)
        base_url = _base_url(host, port)
        env = _children_env(home_dir, db_url, base_url)
        _start_cp(sup, env, host, port, e2b_port, base_url)
        if agent:  # the local host agent (docs/hosts.md): this machine runs sandboxes too
            _start_local_agent(sup, home_dir, base_url, db_url, env, warm_pool)

        e2b_url = _base_url(host, e2b_port) if e2b_port else None
        _print_banner(base_url, e2b_url, home_dir, embedded, time.monotonic() - t0)
        if agent and warm_pool:
            out.print(f"  Warm pools  {warm_pool} on the local agent, filling in the background")
            threading.Thread(
                target=_watch_pools, args=(db_url, home_dir, watching), daemon=True, name="warm-pools"
            ).start()
        code = sup.wait()
    except Stopped:
        code = 0
    except (ChildFailed, EmbeddedPostgresError) as e:
        err.print(f"[red]{e}[/red]")
        code = 1
    finally:
        watching.set()
        if sup.signal_received is not None:
            out.print("Stopping…")
        sup.shutdown()
    raise typer.Exit(code)


def _check_ports_free(host: str, port: int, e2b_port: int) -> None:
    """Exit 1, saying which option to change, when a port ``warren up`` serves is taken."""
    for p, flag in ((port, "--port"), (e2b_port, "--e2b-port")):
        if p and not port_is_free(host, p):
            err.print(f"[red]Port {p} on {host} is already in use[/red]; choose another with {flag}.")
            raise typer.Exit(1)


def _start_database(sup: Supervisor, home_dir: Path) -> tuple[str, bool]:
    """The database URL, and whether it is the embedded PostgreSQL (started here) rather than
    ``WARREN_DATABASE_URL``'s."""
    db_url = os.environ.get("WARREN_DATABASE_URL")
    if db_url:
        return db_url, False
    pg = EmbeddedPostgres(home_dir)
    sup.start(PostgresChild(pg))
    # The CP is on the same machine: its unix socket is cheaper per statement than TCP.
    return pg.socket_url, True


def _children_env(home_dir: Path, db_url: str, base_url: str) -> dict[str, str]:
    """The environment of the cp and agent children: ours, with the home, the database and the
    JWT secret (kept in the home), the public URL and the `base` template build."""
    env = dict(os.environ)
    env["WARREN_HOME"] = str(home_dir)
    env["WARREN_DATABASE_URL"] = db_url
    env["WARREN_JWT_SECRET"] = os.environ.get("WARREN_JWT_SECRET") or load_or_create_secret(
        home_dir / "jwt-secret"
    )
    env.setdefault("WARREN_PUBLIC_URL", base_url)
    # The `base` platform template, built in the background once the agent is online.
    env.setdefault("WARREN_BUILD_BASE_TEMPLATE", "1")
    return env


def _start_cp(
    sup: Supervisor, env: dict[str, str], host: str, port: int, e2b_port: int, base_url: str
) -> None:
    """The ``warren cp`` child, ready once its health endpoint answers."""
    cp_argv = [sys.executable, "-m", "warren.cli.main", "cp", "--host", host, "--port", str(port)]
    cp_argv += ["--e2b-port", str(e2b_port)]
    # The cp child applies pending migrations before it serves (one Python start-up fewer).
    sup.start(ProcessChild("cp", [*cp_argv, "--migrate"], env=env, ready=_healthy(base_url)))


def _start_local_agent(
    sup: Supervisor, home_dir: Path, base_url: str, db_url: str, env: dict[str, str], warm_pool: str | None
) -> None:
    """The local host agent child, or a word on why this machine cannot run one."""
    # Imported here: `warren cp` (this module too) need not load the agent's packages.
    from warren.cli.local_agent import LocalAgentChild, local_agent_unavailable

    if (why := local_agent_unavailable()) is not None:
        err.print(f"[yellow]No local host agent:[/yellow] {why}")
    else:
        sup.start(LocalAgentChild(home_dir, base_url, db_url, env, warm_pool=warm_pool))


def _bind(config: Any, e2b_port: int) -> list[socket.socket]:
    """The main port's socket, and the E2B port's on the same address when it is on."""
    import uvicorn

    sockets = [config.bind_socket()]
    if e2b_port:
        # log_config=None: a Config configures logging as it is made, and its default would put
        # uvicorn's loggers back to text under --log-format json.
        e2b = uvicorn.Config(config.app, host=config.host, port=e2b_port, log_config=None)
        sockets.append(e2b.bind_socket())
    return sockets


def _forwarded_allow_ips(settings: Settings) -> str:
    """Whose X-Forwarded-For uvicorn believes. Anyone's ("*", as before) unless
    WARREN_TRUSTED_PROXIES names the proxies: a client that reaches the CP directly could
    otherwise pick the address the per-address rate limits count."""
    if not settings.trusted_proxies:
        log.warning(
            "--proxy-headers without WARREN_TRUSTED_PROXIES: X-Forwarded-For is believed from any "
            "peer, so the CP must be reachable only through the proxy"
        )
        return "*"
    nets = (item.strip() for item in settings.trusted_proxies.split(","))
    return ",".join(str(ipaddress.ip_network(n, strict=False)) for n in nets if n)


def cp_command(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    e2b_port: E2BPortOpt = 3000,
    migrate_db: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            help="Apply pending migrations before serving (safe with several replicas: they queue "
            "on a database lock).",
        ),
    ] = True,
    proxy_headers: Annotated[
        bool,
        typer.Option(
            help="Trust X-Forwarded-* headers (behind a reverse proxy / load balancer): from the "
            "addresses in WARREN_TRUSTED_PROXIES, else from any peer."
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Serving processes on this port. One process is one event loop on one core (about "
            "300 sandbox creates/s); each is a full replica with its own database pool "
            "(WARREN_DB_POOL_SIZE) and host monitor.",
        ),
    ] = 1,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run the control plane alone (production: N replicas behind a load balancer).

    Needs WARREN_DATABASE_URL and WARREN_JWT_SECRET (>= 32 chars, the same on every replica).
    """
    os.environ["WARREN_E2B_PORT"] = str(e2b_port)  # the workers' settings read it too
    os.environ["WARREN_LOG_FORMAT"] = log_format
    settings = server_settings()
    # Uvicorn applies this again in each worker process (its log_config below).
    logs.setup_logging(logging.INFO, log_format)
    if migrate_db:
        from warren.cp.db import migrate

        migrate.upgrade(settings.database_url or "")  # set: server_settings checked it
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": proxy_headers,
        "forwarded_allow_ips": _forwarded_allow_ips(settings) if proxy_headers else None,
        "timeout_graceful_shutdown": 10,  # open streams must not hold a shutdown forever
        "timeout_keep_alive": HTTP_KEEP_ALIVE_S,
        "log_level": "info",
        **websocket_options(settings),
        **_connection_options(settings),
    }
    options["log_config"] = logs.uvicorn_log_config(log_format)
    _serve(settings, options, workers, e2b_port)


def _connection_options(settings: Settings) -> dict[str, Any]:
    """The request-head deadline and connection bounds (cp/connection_guard.py)."""
    from warren.cp.connection_guard import http_options

    return http_options(settings)


def _serve(settings: Settings, options: dict[str, Any], workers: int, e2b_port: int) -> None:
    """One server, one or two listening sockets (the E2B app answers what arrives on its
    port), in this process or in ``workers`` processes."""
    import uvicorn

    if workers == 1:
        # Here only: with workers, each imports the app itself and the parent never needs it.
        from warren.cp.app import create_server_app

        config = uvicorn.Config(create_server_app(settings), **options)
        sockets = _bind(config, e2b_port)
        uvicorn.Server(config).run(sockets=sockets)
        return
    # Each worker builds its own app (and settings, from the same environment). Supervised by
    # cli/cp_workers.py rather than uvicorn.run, which exits 0 when the workers fail to start.
    from uvicorn.main import STARTUP_FAILURE

    from warren.cli import cp_workers

    # A worker must answer the supervisor's health ping within this, or it is killed (as hung)
    # and started again: uvicorn's 5 s default killed workers still importing the app on a busy
    # host, over and over. A worker that exits is noticed at once (cp_workers.py).
    config = uvicorn.Config(
        cp_workers.FACTORY, factory=True, workers=workers, timeout_worker_healthcheck=30, **options
    )
    if not cp_workers.serve(config, _bind(config, e2b_port)):
        err.print("[red]The control plane workers failed to start[/red] (see the error above).")
        raise typer.Exit(STARTUP_FAILURE)
