"""``warren doctor``: check a machine before it joins as a sandbox host, and say what to fix.

The checks are ``warren.agent.preflight``'s; this module only prints them (one line each:
``ok``, ``warn`` or ``FAIL``, what was found, and the fix) or their JSON, and exits 1 when any
failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from warren.agent import preflight

_MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


def format_line(check: preflight.Check) -> str:
    line = f"{_MARK[check.status]}  {check.name:<18} {check.detail}"
    if check.fix and check.status != "ok":
        line += f"\n      {'':<18} fix: {check.fix}"
    return line


def doctor_command(
    data_dir: Annotated[
        Path, typer.Option(envvar="WARREN_AGENT_DATA_DIR", help="the agent's --data-dir")
    ] = Path("/var/lib/warren/agent"),
    listen: Annotated[str, typer.Option(envvar="WARREN_AGENT_LISTEN", help="the agent's --listen")] = (
        "127.0.0.1:50051"
    ),
    metrics_listen: Annotated[
        str, typer.Option(envvar="WARREN_AGENT_METRICS_LISTEN", help="the agent's --metrics-listen (0: off)")
    ] = "127.0.0.1:9464",
    runtime: Annotated[str, typer.Option(envvar="WARREN_AGENT_RUNTIME", help="auto, runc or crun")] = "auto",
    cp: Annotated[
        str | None,
        typer.Option(
            "--cp", envvar="WARREN_CP_URL", help="control plane URL: compare clocks when no NTP tool answers"
        ),
    ] = None,
    min_free_gib: Annotated[float, typer.Option(help="free disk below this on the data dir fails")] = (
        preflight.MIN_FREE_GIB
    ),
    as_json: Annotated[bool, typer.Option("--json", help="the checks as a JSON array")] = False,
) -> None:
    """Check this machine before it joins as a sandbox host: kernel features, cgroups, runtimes,
    the data dir, clock, ports and IPv6. Exit code 1 when a check fails."""
    target = preflight.Target(
        data_dir=data_dir, listen=listen, metrics_listen=metrics_listen, runtime=runtime, cp_url=cp,
        min_free_gib=min_free_gib, warn_free_gib=max(min_free_gib, preflight.WARN_FREE_GIB),
    )  # fmt: skip
    checks = preflight.run(target)
    failed = preflight.failed(checks)
    if as_json:
        typer.echo(preflight.as_json(checks))
    else:
        for check in checks:
            typer.echo(format_line(check))
        warned = sum(c.status == "warn" for c in checks)
        verdict = "this machine can run warren agent" if not failed else "fix the FAIL lines first"
        typer.echo(f"\n{len(failed)} failed, {warned} warnings: {verdict}")
    raise typer.Exit(1 if failed else 0)
