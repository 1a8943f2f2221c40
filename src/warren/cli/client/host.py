"""``warren host``: create (with a one-time registration token), list and delete hosts. Needs a
user login (``warren login --email``): hosts are account-level."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from warren.cli.client.connection import connection_config, rest
from warren.cli.client.output import JsonOpt, api_errors, out, print_json, print_rows, timestamp
from warren.cli.groups import command_group
from warren.url_path import segment

__all__ = ["app"]

app = command_group(
    "host",
    "Register and manage hosts (needs `warren login --email`).",
    example="warren host create --type byoc --team-id team-…",
)


@app.command("create")
def host_create(
    type_: Annotated[str, typer.Option("--type", help="regular (admins) or byoc.")] = "regular",
    team_id: Annotated[str | None, typer.Option(help="Team of a byoc host.")] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    availability_zone: Annotated[str | None, typer.Option()] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a host and print its one-time registration token (valid 1 hour)."""
    body = {
        k: v
        for k, v in {
            "type": type_,
            "team_id": team_id,
            "provider": provider,
            "availability_zone": availability_zone,
        }.items()
        if v
    }
    with api_errors():
        r = rest("POST", "/v1/hosts", user=True, json=body)
    if json_out:
        print_json(r)
        return
    out.print(f"host {r['host']['id']} created. Register its agent within the hour with:")
    cp_url = connection_config(user=True).url
    # By environment, not --register: a command line is readable by every local user.
    out.print(
        f"  WARREN_REGISTRATION_TOKEN={r['registration_token']} warren agent --cp {cp_url} "
        "--address <IP-THE-CP-CAN-DIAL>:50051 --listen 0.0.0.0:50051"
    )


_COLUMNS = ("ID", "TYPE", "STATUS", "ADDRESS", "CPU", "MEMORY", "LAST HEARTBEAT")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (
        r["id"],
        r.get("type", ""),
        r.get("status", ""),
        r.get("address", ""),
        str(r.get("cpu_cores", "")),
        f"{r['memory_mb']} MB" if r.get("memory_mb") else "",
        timestamp(r.get("last_heartbeat_at")),
    )


@app.command("list")
def host_list(json_out: JsonOpt = False) -> None:
    """List the hosts you can see."""
    with api_errors():
        print_rows(rest("GET", "/v1/hosts", user=True), json_out, _COLUMNS, _cells)


@app.command("delete")
def host_delete(
    host_id: Annotated[str, typer.Argument(show_default=False)],
    force: Annotated[bool, typer.Option(help="Also destroy its active sandboxes.")] = False,
) -> None:
    """Delete a host (refused while it has active sandboxes, unless --force)."""
    with api_errors():
        rest(
            "DELETE",
            f"/v1/hosts/{segment(host_id, 'host ID')}",
            user=True,
            params={"force": "true"} if force else None,
        )
    out.print(f"deleted {host_id}")
