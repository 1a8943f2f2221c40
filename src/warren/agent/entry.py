"""The agent process's entry point: ``warren agent …`` and ``python -m warren.agent …``.

Checks the host (root, the OCI runtime and the programs the agent runs), reads
:class:`~warren.agent.settings.AgentSettings` once, sets up logging, then runs
:func:`warren.agent.main.serve`, linked to a control plane when ``--cp`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from warren import logs
from warren.agent.settings import AgentSettings, load_settings
from warren.logs import LogFormat

if TYPE_CHECKING:
    import grpc

    from warren.agent.main import AgentHandle, ExtraTask

# Tests only, unset in production (tests/harness/agent.py sets it): the pid of the agent's
# parent. When that process ends, however it ends (a test run killed, SIGKILL included), the
# agent destroys every sandbox and stops, as on a Terminate RPC: a killed test run left agents,
# their sandboxes, network slots and mounts behind for the next run (session 29).
EXIT_WITH_PARENT_ENV = "WARREN_AGENT_EXIT_WITH_PARENT"


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    # Text: one line per event (timestamp, level, logger, then `event=… sandbox_id=…` pairs);
    # json: one object per line, with the CP's request id inside an RPC (warren/logs.py).
    # httpx's per-request lines are silenced there: the agent logs heartbeat failures itself.
    logs.setup_logging(level, fmt)


async def run_agent(
    listen: str,
    data_dir: Path,
    runtime: str,
    settings: AgentSettings,
    *,
    cp_url: str | None = None,
    register_token: str | None = None,
    address: str | None = None,
    exit_with_parent: int | None = None,
) -> None:
    """The agent, optionally linked to a control plane (registration, mTLS, heartbeats).
    ``runtime``: runc, crun, or auto (runtime/select.py: choose_default). ``exit_with_parent``:
    see :data:`EXIT_WITH_PARENT_ENV`."""
    from warren.agent.main import serve
    from warren.agent.runtime.select import choose_default

    runtime, why = await choose_default(runtime)
    logging.getLogger("warren.agent").info("event=runtime_default runtime=%s why=%r", runtime, why)
    await asyncio.to_thread(compile_guest)
    follow: list[ExtraTask] = []
    if exit_with_parent is not None:
        follow.append(functools.partial(follow_parent, exit_with_parent))
    if not cp_url:
        await serve(listen, data_dir, settings, runtime=runtime, extra_tasks=follow)
        return
    from warren.agent.control_plane import AgentHooks, ControlPlaneLink
    from warren.agent.host_report import host_report
    from warren.agent.runtime import gvisor
    from warren.agent.startup_checks import check_before_register

    # Before registering: registration spends the one-time token and puts the host online.
    check_before_register(data_dir, listen)
    # ... and the slow part of start-up, so that the host serves soon after it is online: the
    # gVisor platform probe may take seconds (a /dev/kvm that hangs); its answer is cached for
    # the boot, so `serve` finds it at once.
    if settings.gvisor_platform != "off" and gvisor.available():
        await gvisor.choose_platform(settings.gvisor_platform, data_dir / "gvisor-probe")
    links: list[ControlPlaneLink] = []

    async def link_up() -> grpc.ServerCredentials:
        # Called by `serve` after host setup and re-adoption, right before the gRPC server
        # starts: the host is online (registered) only once it is about to serve.
        link = await ControlPlaneLink.connect(
            cp_url=cp_url, data_dir=data_dir, register_token=register_token, address=address or listen,
            default_runtime=runtime,
        )  # fmt: skip
        links.append(link)
        return link.server_credentials()

    async def cp_link(handle: AgentHandle) -> None:
        (link,) = links

        async def shutdown() -> None:
            handle.terminate()

        hooks = AgentHooks(
            pause_all=handle.manager.pause_all, shutdown=shutdown, report=lambda: host_report(handle)
        )
        task = link.start(hooks, interval_s=settings.heartbeat_interval_s)
        try:
            await task
        finally:
            await link.stop()

    await serve(
        listen, data_dir, settings, runtime=runtime, link_up=link_up, extra_tasks=[cp_link, *follow],
        cp_url=cp_url,
    )  # fmt: skip


async def follow_parent(parent: int, handle: AgentHandle) -> None:
    """Wait for process ``parent`` to end, then terminate the agent (:data:`EXIT_WITH_PARENT_ENV`).
    Its pidfd, not the parent-death signal: that one follows the parent *thread* that started
    the agent (a test's worker thread ends long before the test process). A parent that ended
    before this started (the agent was reparented: its pid may be another process's by now)
    ends the agent at once."""
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:
        fd = -1
    try:
        if fd >= 0 and os.getppid() == parent:
            loop, ended = asyncio.get_running_loop(), asyncio.Event()
            loop.add_reader(fd, ended.set)
            try:
                await ended.wait()
            finally:
                loop.remove_reader(fd)
    finally:
        if fd >= 0:
            os.close(fd)
    logging.getLogger("warren.agent").warning(
        "event=parent_gone parent=%d: destroying every sandbox and stopping", parent
    )
    handle.terminate()


def compile_guest() -> None:
    """Byte-compile the guest agent's modules where they are missing or stale. Every sandbox's
    guest runs them with ``-B`` from a read-only bind of this directory, so without them each
    sandbox's start compiles the guest from source (~20 ms of CPU a create under load,
    docs/benchmarks.md "Session 12"); a checkout the host never imported the guest from (``warren
    up`` from git, a fresh worktree) has none. Useful when the sandbox's ``python3`` is the
    agent's minor version (the ``minimal`` template's is Debian 12's 3.11); harmless otherwise,
    and skipped where the directory cannot be written."""
    import compileall

    import warren.guest

    guest_dir = Path(warren.guest.__file__).resolve().parent
    with contextlib.suppress(OSError):
        compileall.compile_dir(guest_dir, quiet=2)


def _check_host(runtime: str) -> None:
    """Refuse to start where the agent cannot work: not root, unknown runtime, missing tools."""
    if os.geteuid() != 0:
        typer.echo(
            "warren agent must run as root: it creates namespaces, cgroups, overlay mounts and "
            "iptables rules. Try: sudo warren agent …",
            err=True,
        )
        raise typer.Exit(code=1)
    if runtime not in ("runc", "crun", "auto"):
        typer.echo(f"unknown --runtime {runtime!r}: use runc, crun or auto", err=True)
        raise typer.Exit(code=2)
    # auto: either will do (runtime/select.py: choose_default).
    oci = runtime if runtime != "auto" else "crun" if shutil.which("crun") else "runc"
    missing = [
        b
        for b in (oci, "ip", "iptables", "debootstrap", "unshare", "setpriv", "prlimit", "cp")
        if not shutil.which(b)
    ]
    if missing:
        typer.echo(
            f"missing host programs: {', '.join(missing)} (apt install runc crun iptables debootstrap)",
            err=True,
        )
        raise typer.Exit(code=1)


def agent_command(
    listen: Annotated[
        str, typer.Option(help="gRPC address: 127.0.0.1:50051 or unix:/path")
    ] = "127.0.0.1:50051",
    data_dir: Annotated[Path, typer.Option(help="where templates, sandboxes and records live")] = Path(
        "/var/lib/warren/agent"
    ),
    runtime: Annotated[
        str,
        typer.Option(
            help="the default OCI runtime: runc, crun, or auto (crun where it works, else runc); "
            "a control plane's creates that name no runtime use it"
        ),
    ] = "auto",
    cp: Annotated[
        str | None, typer.Option("--cp", envvar="WARREN_CP_URL", help="control plane URL (enables mTLS)")
    ] = None,
    register: Annotated[
        str | None,
        typer.Option(
            envvar="WARREN_REGISTRATION_TOKEN",
            help="one-time host registration token (prefer the environment: a command line is public)",
        ),
    ] = None,
    address: Annotated[str | None, typer.Option(help="the ip:port the control plane dials")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text or json (one object per line); default WARREN_LOG_FORMAT, text")
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            help="host:port of GET /metrics (Prometheus), or 0 for off; default "
            "WARREN_AGENT_METRICS_LISTEN, 127.0.0.1:9464"
        ),
    ] = None,
    warm_pool: Annotated[
        str | None,
        typer.Option(
            help="warm pools kept from the start, TEMPLATE[@RUNTIME]=SIZE: minimal=4 (the default "
            "runtime), minimal@runc=2,minimal@crun=4; the control plane sets others; default "
            "WARREN_AGENT_WARM_POOL, none"
        ),
    ] = None,
) -> None:
    """Run the host agent: sandboxes on this machine, served over gRPC."""
    _check_host(runtime)
    os.environ.pop("WARREN_REGISTRATION_TOKEN", None)  # consumed: not for the agent's children
    parent = os.environ.pop(EXIT_WITH_PARENT_ENV, "")  # likewise
    settings = load_settings(log_format=log_format, metrics_listen=metrics_listen, warm_pool=warm_pool)
    setup_logging(settings.log_level, settings.log_format)
    follow = int(parent) if parent else None
    asyncio.run(
        run_agent(
            listen,
            data_dir,
            runtime,
            settings,
            cp_url=cp,
            register_token=register,
            address=address,
            exit_with_parent=follow,
        )
    )
