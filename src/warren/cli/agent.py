"""`warren agent`: run the host agent on this machine."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer


def setup_logging() -> None:
    # One line per event: timestamp, level, logger, then `event=… sandbox_id=…` pairs.
    logging.basicConfig(
        level=os.environ.get("WARREN_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: one line per heartbeat is noise; the agent logs
    # heartbeat failures and recoveries itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def run_agent(
    listen: str,
    data_dir: Path,
    runtime: str,
    *,
    cp_url: str | None = None,
    register_token: str | None = None,
    address: str | None = None,
) -> None:
    """The agent, optionally linked to a control plane (registration, mTLS, heartbeats)."""
    from warren.agent.main import AgentHandle, serve

    if not cp_url:
        await serve(listen, data_dir, runtime=runtime)
        return
    from warren.agent.control_plane import AgentHooks, ControlPlaneLink

    link = await ControlPlaneLink.connect(
        cp_url=cp_url, data_dir=data_dir, register_token=register_token, address=address or listen
    )

    async def cp_link(handle: AgentHandle) -> None:
        async def shutdown() -> None:
            handle.terminate()

        task = link.start(AgentHooks(pause_all=handle.manager.pause_all, shutdown=shutdown))
        try:
            await task
        finally:
            await link.stop()

    await serve(listen, data_dir, runtime=runtime, tls=link.server_credentials(), extra_tasks=[cp_link])


def agent_command(
    listen: Annotated[
        str, typer.Option(help="gRPC address: 127.0.0.1:50051 or unix:/path")
    ] = "127.0.0.1:50051",
    data_dir: Annotated[Path, typer.Option(help="where templates, sandboxes and records live")] = Path(
        "/var/lib/warren/agent"
    ),
    runtime: Annotated[str, typer.Option(help="OCI runtime: runc or crun")] = "runc",
    cp: Annotated[
        str | None, typer.Option("--cp", envvar="WARREN_CP_URL", help="control plane URL (enables mTLS)")
    ] = None,
    register: Annotated[str | None, typer.Option(help="one-time host registration token")] = None,
    address: Annotated[str | None, typer.Option(help="the ip:port the control plane dials")] = None,
) -> None:
    """Run the host agent: sandboxes on this machine, served over gRPC."""
    if os.geteuid() != 0:
        typer.echo(
            "warren agent must run as root: it creates namespaces, cgroups, overlay mounts and "
            "iptables rules. Try: sudo warren agent …",
            err=True,
        )
        raise typer.Exit(code=1)
    if runtime not in ("runc", "crun"):
        typer.echo(f"unknown --runtime {runtime!r}: use runc or crun", err=True)
        raise typer.Exit(code=2)
    missing = [b for b in (runtime, "ip", "iptables", "debootstrap", "unshare", "cp") if not shutil.which(b)]
    if missing:
        typer.echo(
            f"missing host programs: {', '.join(missing)} (apt install runc crun iptables debootstrap)",
            err=True,
        )
        raise typer.Exit(code=1)
    setup_logging()
    asyncio.run(run_agent(listen, data_dir, runtime, cp_url=cp, register_token=register, address=address))
