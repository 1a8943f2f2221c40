"""``warren agent install``: make this machine a sandbox host of a control plane.

In order: the doctor's checks (``warren.agent.preflight``; any FAIL and nothing is written),
``/etc/warren/agent.toml`` (0600, root: it holds the one-time registration token), the unit
``/etc/systemd/system/warren-agent.service`` (the text of ``deploy/systemd/warren-agent.service``
with ExecStart naming the warren this command runs from), then ``systemctl daemon-reload`` and
``systemctl enable --now warren-agent`` when systemd is the init system. Without systemd it
says what it wrote and the command that runs the agent by hand; it never pretends to start it.
``--root DIR`` prefixes every path written (and never starts anything), for tests and images.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from warren import config_file
from warren.agent import preflight
from warren.cli.doctor import format_line

CONFIG_PATH = config_file.AGENT_CONFIG
UNIT_PATH = Path("/etc/systemd/system/warren-agent.service")
UNIT_NAME = "warren-agent"
# The shipped unit (deploy/systemd/warren-agent.service) names this executable; a test keeps
# the shipped file and UNIT_TEMPLATE identical.
SHIPPED_EXECUTABLE = "/opt/warren/bin/warren"
UNIT_TEMPLATE = Path(__file__).with_name("warren-agent.service.in")


def warren_executable() -> str:
    """The absolute path of the ``warren`` this process runs from."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "warren":
        found = shutil.which(str(argv0)) if not argv0.is_absolute() else str(argv0)
        if found:
            return str(Path(found).absolute())
    found = shutil.which("warren")
    if found:
        return str(Path(found).absolute())
    raise typer.BadParameter("cannot find the warren executable: put it on PATH")


def render_unit(executable: str, config: Path = CONFIG_PATH) -> str:
    text = UNIT_TEMPLATE.read_text()
    return text.replace("@WARREN@", executable).replace("@CONFIG@", str(config))


def _toml_str(value: str) -> str:
    # A JSON string (escapes: \\ \" \uXXXX) is a valid TOML basic string.
    return json.dumps(value)


def render_config(*, cp_url: str, token: str, listen: str, address: str, data_dir: Path, runtime: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"# Written by `warren agent install` on {now}. Keys: the WARREN_AGENT_* variables'",
        "# names without the prefix, lower-case (docs/agent.md, Settings); the environment",
        "# (/etc/warren/agent.env) overrides them.",
        f"cp_url = {_toml_str(cp_url)}",
        f"listen = {_toml_str(listen)}",
        f"address = {_toml_str(address)}",
        f"data_dir = {_toml_str(str(data_dir))}",
        f"runtime = {_toml_str(runtime)}",
        "# One-time: used only while the data dir holds no host credentials (the first start).",
        f"registration_token = {_toml_str(token)}",
        "",
    ])  # fmt: skip


def default_address(cp_url: str, listen: str) -> str:
    """The address the CP dials: the listen address when it names one, else the source
    address this machine uses towards the CP, with the listen port."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host not in ("0.0.0.0", "::", ""):
        return listen
    cp = urlsplit(cp_url)
    cp_host = cp.hostname or "127.0.0.1"
    family = socket.AF_INET6 if ":" in cp_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((cp_host, cp.port or 443))  # UDP: no packet is sent, only a route is picked
        mine = s.getsockname()[0]
    return f"[{mine}]:{port}" if ":" in mine else f"{mine}:{port}"


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if os.geteuid() == 0:
        os.chown(tmp, 0, 0)
    tmp.replace(path)


def systemd_running(root: Path) -> bool:
    """sd_booted(3): systemd is the init system when /run/systemd/system is a directory."""
    return (root / "run/systemd/system").is_dir()


def _start_with_systemd() -> None:
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]):
        typer.echo("$ " + " ".join(argv))
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            typer.echo((done.stdout + done.stderr).strip(), err=True)
            typer.echo(
                f"{' '.join(argv)} failed (exit {done.returncode}); see journalctl -u {UNIT_NAME}", err=True
            )
            raise typer.Exit(1)
    typer.echo(f"started: systemctl status {UNIT_NAME}; logs: journalctl -u {UNIT_NAME} -f")


def install_command(
    cp: Annotated[str, typer.Option("--cp", help="the control plane's URL, as this machine reaches it")],
    token: Annotated[
        str, typer.Option(envvar="WARREN_REGISTRATION_TOKEN", help="the host's one-time registration token")
    ],
    listen: Annotated[str, typer.Option(help="gRPC address the agent serves on")] = "0.0.0.0:50051",
    address: Annotated[
        str | None,
        typer.Option(help="ip:port the control plane dials (default: this machine's address towards the CP)"),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="where sandboxes and templates live")] = Path(
        "/var/lib/warren/agent"
    ),
    runtime: Annotated[
        str, typer.Option(help="the default runtime: auto (crun where it works, else runc), runc or crun")
    ] = "auto",
    root: Annotated[
        Path | None,
        typer.Option(help="prefix every path written with this directory, and start nothing (tests, images)"),
    ] = None,
) -> None:
    """Install the host agent as a service: check the host (as `warren doctor`), write
    /etc/warren/agent.toml and the systemd unit, and start it."""
    checks = preflight.run(preflight.Target(data_dir=data_dir, listen=listen, metrics_listen="0",
                                            runtime=runtime, cp_url=cp))  # fmt: skip
    if failed := preflight.failed(checks):
        typer.echo("This machine is not ready to be a host; nothing was written. Fix:", err=True)
        for check in failed:
            typer.echo(format_line(check), err=True)
        raise typer.Exit(1)
    prefix = root if root is not None else Path("/")
    config_path = prefix / CONFIG_PATH.relative_to("/")
    unit_path = prefix / UNIT_PATH.relative_to("/")
    executable = warren_executable()
    config = render_config(
        cp_url=cp, token=token, listen=listen, address=address or default_address(cp, listen),
        data_dir=data_dir, runtime=runtime,
    )  # fmt: skip
    _write(config_path, config, 0o600)
    _write(unit_path, render_unit(executable), 0o644)
    typer.echo(f"wrote {config_path} (0600)\nwrote {unit_path}")
    if root is None and systemd_running(prefix):
        _start_with_systemd()
        return
    why = "--root was given" if root is not None else "systemd is not the init system here"
    typer.echo(
        f"Not started: {why}. Run the agent by hand (as root, under your supervisor):\n"
        f"  {executable} agent --config {CONFIG_PATH}"
    )
