"""``warren snapshot``: save sandboxes as templates, list and delete them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from warren.cli.client.connection import SandboxArg, rest
from warren.cli.client.output import JsonOpt, api_errors, human_size, out, print_json, print_rows, timestamp
from warren.cli.groups import command_group
from warren.url_path import segment

__all__ = ["app"]

app = command_group(
    "snapshot",
    "Save sandboxes as templates and manage them.",
    example="warren snapshot create sb-… --name py-ready && warren sandbox create --template py-ready",
)


@app.command("create")
def snapshot_create(
    sandbox_id: SandboxArg,
    name: Annotated[str | None, typer.Option(help="Snapshot name (default template-<hex>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing snapshot of that name.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot a running or paused sandbox. The sandbox is left paused."""
    body: dict[str, Any] = {"sandbox_id": sandbox_id}
    if name:
        body["name"] = name
    with api_errors():
        t = rest("POST", "/v1/snapshots", json=body, params={"overwrite": "true"} if overwrite else None)
    if json_out:
        print_json(t)
    else:
        out.print(f"{t['name']} ({t['kind']}, {human_size(t['size_bytes'])})")


_COLUMNS = ("NAME", "TYPE", "KIND", "VCPUS", "MEMORY", "SIZE", "CREATED", "")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (
        r["name"],
        r["type"],
        r.get("kind", ""),
        str(r.get("vcpus", "")),
        f"{r['memory_mb']} MB" if r.get("memory_mb") else "",
        human_size(r.get("size_bytes", 0)),
        timestamp(r.get("created_at")),
        "platform" if r.get("platform") else "",
    )


@app.command("list")
def snapshot_list(
    type_: Annotated[str | None, typer.Option("--type", help="base or snapshot.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the team's snapshots and the platform templates."""
    with api_errors():
        rows = rest("GET", "/v1/snapshots", params={"type": type_} if type_ else None)
        print_rows(rows, json_out, _COLUMNS, _cells)


@app.command("delete")
def snapshot_delete(name: Annotated[str, typer.Argument(show_default=False)]) -> None:
    """Delete a snapshot (its files on every host, then its record)."""
    with api_errors():
        rest("DELETE", f"/v1/snapshots/{segment(name, 'snapshot name')}")
    out.print(f"deleted {name}")
