"""``warren files``: copy files of any size in and out of a sandbox, and list directories."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from warren.cli.client.connection import SandboxArg, UserOpt, open_sandbox
from warren.cli.client.output import (
    JsonOpt,
    api_errors,
    err,
    fail,
    human_size,
    out,
    print_json,
    table,
    timestamp,
)
from warren.cli.groups import command_group

__all__ = ["app"]

app = command_group(
    "files",
    "Copy files in and out of a sandbox, and list directories.",
    example="warren files put sb-… ./data.csv /root/data.csv",
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )


@app.command("put")
def files_put(
    sandbox_id: SandboxArg,
    local: Annotated[Path, typer.Argument(help="Local file ('-' for stdin).", show_default=False)],
    remote: Annotated[str, typer.Argument(help="Absolute path in the sandbox.", show_default=False)],
    user: UserOpt = None,
) -> None:
    """Upload a file of any size (streamed, with a progress bar), owned by --user if given
    (a relative path is then under their home)."""
    with api_errors(), open_sandbox(sandbox_id) as sbx:
        if str(local) == "-":
            sbx.files.write_stream(remote, sys.stdin.buffer, user=user)
            return
        if not local.is_file():
            fail(f"{local}: no such file")
        with _progress() as progress, local.open("rb") as f:
            task = progress.add_task(f"put {local.name}", total=local.stat().st_size)
            sbx.files.write_stream(remote, f, progress=lambda n: progress.advance(task, n), user=user)


@app.command("get")
def files_get(
    sandbox_id: SandboxArg,
    remote: Annotated[str, typer.Argument(help="Path in the sandbox.", show_default=False)],
    local: Annotated[Path, typer.Argument(help="Local file ('-' for stdout).", show_default=False)],
    user: UserOpt = None,
) -> None:
    """Download a file of any size (streamed, with a progress bar). A transfer that breaks
    midway fails and leaves no partial file behind."""
    with api_errors(), open_sandbox(sandbox_id) as sbx:
        if str(local) == "-":
            for chunk in sbx.files.read_stream(remote, user=user):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        size = sbx.files.get_info(remote, user=user).size
        part = local.with_name(local.name + ".part")
        try:
            with _progress() as progress, part.open("wb") as f:
                task = progress.add_task(f"get {Path(remote).name}", total=size)
                for chunk in sbx.files.read_stream(remote, user=user):
                    f.write(chunk)
                    progress.advance(task, len(chunk))
            part.replace(local)
        finally:
            part.unlink(missing_ok=True)


@app.command("ls")
def files_ls(
    sandbox_id: SandboxArg,
    path: Annotated[str, typer.Argument(help="Directory in the sandbox.")] = "/",
    depth: Annotated[int, typer.Option(help="Levels to descend.")] = 1,
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List a directory."""
    with api_errors(), open_sandbox(sandbox_id) as sbx:
        entries = sbx.files.list(path, depth=depth, user=user)
    if json_out:
        print_json(entries)
        return
    t = table("PERMISSIONS", "OWNER", "SIZE", "MODIFIED", "PATH")
    for e in entries:
        name = e.path + ("/" if e.is_dir else "") + (f" -> {e.symlink_target}" if e.symlink_target else "")
        t.add_row(e.permissions, e.owner, human_size(e.size), timestamp(e.modified_time), name)
    out.print(t)
