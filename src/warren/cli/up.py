"""``warren up`` (everything on one machine) and ``warren cp`` (the control plane alone).

``warren up`` is a small supervisor with named children, started in order and stopped in
reverse order:

    postgres   the embedded PostgreSQL (skipped when WARREN_DATABASE_URL is set)
    cp         ``warren cp`` as a child process, serving the API and the dashboard
    agent      the local host agent, registered to that CP (``warren.cli.local_agent``)

Each child leads its own process group, so a
terminal's Ctrl-C reaches only the supervisor, which then stops the children in order; and each
child gets a parent-death signal, so even a SIGKILLed supervisor leaves nothing running. If a
child dies on its own, the supervisor stops the others and exits non-zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Protocol

import httpx
import typer
from rich.console import Console

from warren.config import Settings, default_home
from warren.cp.db.embedded import EmbeddedPostgres, EmbeddedPostgresError

log = logging.getLogger("warren.up")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

_PR_SET_PDEATHSIG = 1

HostOpt = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")]
PortOpt = Annotated[int, typer.Option(help="TCP port of the HTTP API and dashboard.")]
HomeOpt = Annotated[
    Path | None,
    typer.Option(
        help="Data directory (database, JWT secret).",
        show_default="$WARREN_HOME, else /var/lib/warren as root, else ~/.local/share/warren",
    ),
]


class Stopped(Exception):
    """Startup was interrupted by SIGINT/SIGTERM."""


class ChildFailed(Exception):
    pass


# ------------------------------------------------------------------------------- supervisor


class Child(Protocol):
    name: str

    def start(self, supervisor: Supervisor) -> None:
        """Start and return once ready; raise ``Stopped`` if the supervisor is stopping."""

    def poll(self) -> int | None:
        """None while running, else its exit code."""

    def stop(self) -> None:
        """Stop it and everything it started; idempotent."""


def _set_pdeathsig(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        # If the supervisor dies without stopping us (SIGKILL, OOM), we get `sig`.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


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


class ProcessChild:
    """A child process, ready once ``ready()`` returns True; stopped with ``stop_signal``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 60.0,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, supervisor: Supervisor) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the supervisor only; it stops us in order
            preexec_fn=_set_pdeathsig(self.stop_signal),
        )
        if self.ready is None:
            return
        deadline = time.monotonic() + self.ready_timeout
        while not self.ready():
            if (code := self.process.poll()) is not None:
                raise ChildFailed(f"{self.name} exited with code {code} while starting")
            if supervisor.stopping.is_set():
                raise Stopped
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} was not ready after {self.ready_timeout:.0f}s")
            supervisor.stopping.wait(0.05)

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, self.name, self.stop_signal, self.stop_timeout)


def stop_process(proc: subprocess.Popen[bytes], name: str, sig: int, timeout: float) -> None:
    """Ask ``proc`` to stop with ``sig``, wait up to ``timeout`` s, then kill its process group
    (whatever it started there goes with it) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()


class Supervisor:
    """Named children started in order, watched, and stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.signal_received: int | None = None

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.signal_received = signum
            self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)

    def start(self, child: Child) -> None:
        if self.stopping.is_set():
            raise Stopped
        self.children.append(child)  # appended first: a half-started child is stopped too
        t0 = time.monotonic()
        child.start(self)
        log.info("%s started in %.2fs", child.name, time.monotonic() - t0)
        if self.stopping.is_set():
            raise Stopped

    def wait(self) -> int:
        """Block until a signal (returns 0) or until a child dies (returns 1)."""
        while not self.stopping.wait(0.25):
            for child in self.children:
                code = child.poll()
                if code is not None:
                    err.print(f"[red]{child.name} exited unexpectedly (code {code}); stopping[/red]")
                    return 1
        return 0

    def shutdown(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception:  # one failing child must not keep the others running
                log.exception("stopping %s failed", child.name)
        self.children.clear()


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


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(base_url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def load_or_create_secret(path: Path) -> str:
    """A random secret kept in a 0600 file, created on first use."""
    try:
        value = path.read_text().strip()
        if len(value) >= 32:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    tmp.replace(path)
    return value


def _prepare_home(home: Path) -> Path:
    home = home.expanduser().absolute()
    # Searchable (not readable) by others: as root the database runs as the `warren` user and
    # must reach <home>/postgres. Secrets inside are 0600.
    home.mkdir(parents=True, exist_ok=True, mode=0o755)
    return home


@contextlib.contextmanager
def database_url(home: Path | None) -> Iterator[str]:
    """URL of Warren's database: WARREN_DATABASE_URL, else the embedded server of ``home``
    (the running one if a ``warren up`` is up, otherwise started just for the duration)."""
    if url := os.environ.get("WARREN_DATABASE_URL"):
        yield url
        return
    pg = EmbeddedPostgres(_prepare_home(home or default_home()))
    if not (pg.data_dir / "PG_VERSION").exists():
        err.print(f"[red]No database in {pg.home}[/red]: run `warren up` first, or set WARREN_DATABASE_URL.")
        raise typer.Exit(1)
    if pg.attach():
        yield pg.url
        return
    with pg:
        yield pg.url


def _print_banner(base_url: str, home: Path | None, embedded: bool, elapsed: float) -> None:
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
    if embedded and home is not None:
        lines.append(f"  Data        {home}")
    lines += ["", "Press Ctrl-C to stop."]
    # soft_wrap: long curl lines stay copy-pasteable instead of being broken at the terminal width.
    out.print("\n" + "\n".join(lines) + "\n", soft_wrap=True)


# ------------------------------------------------------------------------------- commands


def up_command(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    home: HomeOpt = None,
    agent: Annotated[
        bool, typer.Option("--agent/--no-agent", help="Also run a host agent on this machine (needs root).")
    ] = True,
) -> None:
    """Run Warren on this machine: embedded PostgreSQL, migrations, control plane, host agent.

    As root, a local host agent registered to this control plane runs sandboxes here too.
    Data persists in --home. With WARREN_DATABASE_URL set, that PostgreSQL is used instead of
    the embedded one. Ctrl-C (or SIGTERM) stops everything.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness probe
    t0 = time.monotonic()
    home_dir = _prepare_home(home or default_home())
    if not _port_free(host, port):
        err.print(f"[red]Port {port} on {host} is already in use[/red]; choose another with --port.")
        raise typer.Exit(1)

    sup = Supervisor()
    sup.install_signal_handlers()
    code = 1
    try:
        db_url = os.environ.get("WARREN_DATABASE_URL")
        embedded = not db_url
        if embedded:
            pg = EmbeddedPostgres(home_dir)
            sup.start(PostgresChild(pg))
            # The CP is on the same machine: its unix socket is cheaper per statement than TCP.
            db_url = pg.socket_url
        assert db_url is not None

        base_url = _base_url(host, port)
        env = dict(os.environ)
        env["WARREN_HOME"] = str(home_dir)
        env["WARREN_DATABASE_URL"] = db_url
        env["WARREN_JWT_SECRET"] = os.environ.get("WARREN_JWT_SECRET") or load_or_create_secret(
            home_dir / "jwt-secret"
        )
        env.setdefault("WARREN_PUBLIC_URL", base_url)
        cp_argv = [sys.executable, "-m", "warren.cli.main", "cp", "--host", host, "--port", str(port)]
        # The cp child applies pending migrations before it serves (one Python start-up fewer).
        sup.start(ProcessChild("cp", [*cp_argv, "--migrate"], env=env, ready=_healthy(base_url)))
        if agent:  # the local host agent (docs/hosts.md): this machine runs sandboxes too
            from warren.cli.local_agent import LocalAgentChild, local_agent_unavailable

            if (why := local_agent_unavailable()) is not None:
                err.print(f"[yellow]No local host agent:[/yellow] {why}")
            else:
                sup.start(LocalAgentChild(home_dir, base_url, db_url, env))

        _print_banner(base_url, home_dir, embedded, time.monotonic() - t0)
        code = sup.wait()
    except Stopped:
        code = 0
    except (ChildFailed, EmbeddedPostgresError) as e:
        err.print(f"[red]{e}[/red]")
        code = 1
    finally:
        if sup.signal_received is not None:
            out.print("Stopping…")
        sup.shutdown()
    raise typer.Exit(code)


def cp_command(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    migrate_db: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            help="Apply pending migrations before serving (safe with several replicas: they queue "
            "on a database lock).",
        ),
    ] = True,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-* headers (behind a reverse proxy / load balancer).")
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
) -> None:
    """Run the control plane alone (production: N replicas behind a load balancer).

    Needs WARREN_DATABASE_URL and WARREN_JWT_SECRET (>= 32 chars, the same on every replica).
    """
    import uvicorn

    from warren.cp.app import create_app

    settings = Settings()
    if not settings.database_url:
        err.print("[red]WARREN_DATABASE_URL is not set[/red] (postgresql://user:password@host:5432/db).")
        raise typer.Exit(1)
    if len(settings.jwt_secret) < 32:
        err.print("[red]WARREN_JWT_SECRET must be set to at least 32 characters.[/red]")
        raise typer.Exit(1)
    if migrate_db:
        from warren.cp.db import migrate

        migrate.upgrade(settings.database_url)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": proxy_headers,
        "forwarded_allow_ips": "*" if proxy_headers else None,
        "timeout_graceful_shutdown": 10,  # open streams must not hold a shutdown forever
        "log_level": "info",
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Each worker builds its own app (and settings, from the same environment). Supervised here
    # rather than through uvicorn.run, which exits 0 when the workers fail to start.
    from uvicorn.main import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("warren.cp.app:create_app", factory=True, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        err.print("[red]The control plane workers failed to start[/red] (see the log above).")
        raise typer.Exit(STARTUP_FAILURE)
