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


def agent_command(
    listen: Annotated[
        str, typer.Option(help="gRPC address: 127.0.0.1:50051 or unix:/path")
    ] = "127.0.0.1:50051",
    data_dir: Annotated[Path, typer.Option(help="where templates, sandboxes and records live")] = Path(
        "/var/lib/warren/agent"
    ),
    runtime: Annotated[str, typer.Option(help="OCI runtime: runc or crun")] = "runc",
    cp: Annotated[
        str | None,
        typer.Option(
            envvar="WARREN_CP_URL",
            help="control plane URL; when set the agent registers/heartbeats and serves ONLY mTLS",
        ),
    ] = None,
    register: Annotated[
        str | None, typer.Option(help="one-time registration token (always re-registers)")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="host:port the control plane dials (required with --register)")
    ] = None,
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
    missing = [
        b for b in (runtime, "ip", "iptables", "mount", "debootstrap", "unshare") if not shutil.which(b)
    ]
    if missing:
        typer.echo(
            f"missing host programs: {', '.join(missing)} (apt install runc crun iptables debootstrap)",
            err=True,
        )
        raise typer.Exit(code=1)
    if (register or address) and not cp:
        typer.echo("--register and --address need --cp (or WARREN_CP_URL)", err=True)
        raise typer.Exit(code=2)
    setup_logging()
    from warren.agent.control_plane import ControlPlaneError

    try:
        asyncio.run(_run(listen, data_dir, runtime, cp, register, address))
    except ControlPlaneError as e:
        typer.echo(f"warren agent: {e}", err=True)
        raise typer.Exit(code=1) from None


async def _run(
    listen: str, data_dir: Path, runtime: str, cp: str | None, register: str | None, address: str | None
) -> None:
    from warren.agent.main import AgentHandle, ExtraTask, serve

    if not cp:
        await serve(listen, data_dir, runtime=runtime)
        return
    # Registered with a control plane (SPEC §3): credentials first, then serve only over mTLS
    # with the certificate the CP issued, and keep the heartbeat running beside the server.
    from warren.agent.control_plane import AgentHooks, ControlPlaneLink, delete_credentials

    link = await ControlPlaneLink.connect(
        cp_url=cp, data_dir=data_dir, register_token=register, address=address
    )

    async def control_plane_task(handle: AgentHandle) -> None:
        async def shutdown() -> None:
            handle.terminate()  # the CP deleted this host: destroy every sandbox, then stop

        try:
            await link.start(AgentHooks(pause_all=handle.manager.pause_all, shutdown=shutdown))
        finally:
            await link.stop()
            if handle.destroy_on_stop:
                # Terminate comes only from the CP (mTLS), when it deletes this host: the
                # credentials are dead, so a restart must not try them.
                delete_credentials(data_dir)

    tasks: list[ExtraTask] = [control_plane_task]
    await serve(listen, data_dir, runtime=runtime, tls=link.server_credentials(), extra_tasks=tasks)
