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
    setup_logging()
    from warren.agent.main import serve

    asyncio.run(serve(listen, data_dir, runtime=runtime))
