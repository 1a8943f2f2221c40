"""``warren sandbox``: create, list, inspect, exec in, pause, resume and kill sandboxes, rotate their
E2B access token, and an interactive shell (a terminal on a PTY in the sandbox, shell.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, TextIO

import typer
from rich.table import Table
from rich.text import Text

from warren.cli.client import shell
from warren.cli.client.connection import SandboxArg, UserOpt, connection_config, open_sandbox, rest
from warren.cli.client.output import JsonOpt, api_errors, err, fail, out, print_json, table, timestamp
from warren.cli.groups import command_group
from warren.sdk import Sandbox

__all__ = ["app"]

app = command_group(
    "sandbox", "Create, inspect and drive sandboxes.", example="warren sandbox create --template minimal"
)


def _sandbox_table(rows: list[dict[str, Any]]) -> Table:
    t = table("ID", "STATUS", "TEMPLATE", "RUNTIME", "VCPUS", "MEMORY", "TIMEOUT", "CREATED")
    colors = {"running": "green", "paused": "yellow", "stopped": "dim", "error": "red", "missing": "red"}
    for r in rows:
        status = r.get("status", "")
        # How a paused sandbox is paused: "paused (disk)" when its memory was written out; why
        # an ended one ended: "stopped (lifetime_ended)".
        detail = r.get("paused_state") if status == "paused" else r.get("end_reason")
        shown_status = f"{status} ({detail})" if detail else status
        t.add_row(
            r["id"],
            Text(shown_status, style=colors.get(status, "white")),
            r.get("template", ""),
            r.get("runtime", ""),
            str(r.get("vcpus", "")),
            f"{r.get('memory_mb', '')} MB",
            f"{r.get('timeout_sec')} s" if r.get("timeout_sec") else "none",
            timestamp(r.get("created_at")),
        )
    return t


@app.command("create")
def sandbox_create(
    template: Annotated[str, typer.Option(help="Template or snapshot name.")] = "minimal",
    vcpus: Annotated[int | None, typer.Option(help="vCPUs (a snapshot keeps its own).")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory in MB (a snapshot keeps its own).")] = None,
    timeout: Annotated[int, typer.Option(help="Seconds of inactivity before auto-pause; 0 = never.")] = 0,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")] = None,
    internet: Annotated[bool, typer.Option(help="Allow outbound network access.")] = True,
    runtime: Annotated[
        str | None,
        typer.Option(help="Runtime tier: runc, crun or gvisor (gVisor's kernel); default: the platform's."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a sandbox.

    Example: warren sandbox create --template my-snapshot -e DEBUG=1

    Example: warren sandbox create --runtime gvisor
    """
    envs = {}
    for item in env or []:
        if "=" not in item:
            fail(f"--env wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        envs[k] = v
    cfg = connection_config()
    with api_errors():
        sbx = Sandbox.create(
            template,
            timeout=timeout or None,
            vcpus=vcpus,
            memory_mb=memory_mb,
            envs=envs or None,
            internet=internet,
            runtime=runtime,
            url=cfg.url,
            api_key=cfg.api_key,
            access_token=cfg.access_token,
        )
        sbx.close()
    if json_out:
        print_json(sbx.info)
    else:
        out.print(sbx.id)


@app.command("list")
def sandbox_list(json_out: JsonOpt = False) -> None:
    """List the team's sandboxes (stopped ones are hidden)."""
    with api_errors():
        rows = rest("GET", "/v1/sandboxes")
    if json_out:
        print_json(rows)
    elif not rows:
        out.print("No sandboxes.")
    else:
        out.print(_sandbox_table(rows))


@app.command("get")
def sandbox_get(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Show one sandbox (in any status)."""
    with api_errors():
        row = rest("GET", f"/v1/sandboxes/{sandbox_id}")
    if json_out:
        print_json(row)
    else:
        out.print(_sandbox_table([row]))


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox_exec(
    sandbox_id: SandboxArg,
    command: Annotated[list[str], typer.Argument(help="A shell command line, or argv after --.")],
    timeout: Annotated[float, typer.Option(help="Seconds before the command is killed; 0 = none.")] = 60,
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Run as this user of the sandbox (default: the template's)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a command and exit with its exit code. Output streams as it is produced.

    One argument runs through /bin/sh -c; several are run as argv without a shell.

    Examples:

        warren sandbox exec sb-… 'ls -la /tmp | head'

        warren sandbox exec sb-… -- python3 -c 'print(1)'

        warren sandbox exec --user user sb-… whoami
    """
    envs = dict(item.split("=", 1) for item in env or [] if "=" in item)
    cmd: str | list[str] = command[0] if len(command) == 1 else command
    with api_errors(), open_sandbox(sandbox_id) as sbx:
        if json_out:
            r = sbx.commands.run(cmd, timeout=timeout or None, cwd=cwd, envs=envs, user=user)
            print_json({"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "error": r.error})
        else:
            r = sbx.commands.run(
                cmd,
                timeout=timeout or None,
                cwd=cwd,
                envs=envs,
                user=user,
                # The command's bytes as they come (`cat /bin/ls > out` is /bin/ls); not kept: a
                # command printing on would hold memory.
                on_stdout_bytes=_write_to(sys.stdout),
                on_stderr_bytes=_write_to(sys.stderr),
                keep_output=False,
            )
            if r.error:
                err.print(r.error, style="yellow")
    raise typer.Exit(r.exit_code if 0 <= r.exit_code < 256 else 1)


def _write_to(stream: TextIO) -> Callable[[bytes], None]:
    """A callback that writes bytes to ``stream``'s binary buffer at once, as they are."""

    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return write


def _lifecycle(verb: str, sandbox_id: str, json_out: bool) -> None:
    with api_errors():
        if verb == "kill":
            rest("DELETE", f"/v1/sandboxes/{sandbox_id}")
            row: Any = {"id": sandbox_id, "status": "stopped"}
        else:
            row = rest("POST", f"/v1/sandboxes/{sandbox_id}/{verb}")
    if json_out:
        print_json(row)
    else:
        out.print(f"{sandbox_id}: {row['status']}")


@app.command("kill")
def sandbox_kill(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Destroy a sandbox."""
    _lifecycle("kill", sandbox_id, json_out)


@app.command("pause")
def sandbox_pause(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Pause (freeze) a running sandbox; memory is kept."""
    _lifecycle("pause", sandbox_id, json_out)


@app.command("resume")
def sandbox_resume(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Resume a paused sandbox."""
    _lifecycle("resume", sandbox_id, json_out)


@app.command("rotate-token")
def sandbox_rotate_token(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Rotate the sandbox's E2B access token: the old token, and every E2B file URL signed
    with it, stop working at once; prints the new one (E2B's connect also returns it).

    Example:

        warren sandbox rotate-token sb-…
    """
    with api_errors():
        row = rest("POST", f"/v1/sandboxes/{sandbox_id}/access-token")
    if json_out:
        print_json(row)
    else:
        out.print(row["access_token"])


@app.command("shell")
def sandbox_shell(
    sandbox_id: SandboxArg,
    user: UserOpt = None,
    cmd: Annotated[
        str | None,
        typer.Option("--cmd", help="Run this command line (through /bin/sh -c) instead of a login shell."),
    ] = None,
) -> None:
    """Open a terminal in the sandbox: the user's login shell on a real PTY (shell.py).

    Exits with the remote exit code. Ctrl-D at an empty prompt (or `exit`) leaves; a script can
    be piped in instead of typing.

    Examples:

        warren sandbox shell sb-…

        warren sandbox shell --user user --cmd htop sb-…
    """
    with api_errors():
        code = shell.run_shell(sandbox_id, user=user, cmd=cmd)
    raise typer.Exit(code if 0 <= code < 256 else 1)
