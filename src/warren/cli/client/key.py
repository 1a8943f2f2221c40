"""``warren key``: create, list and revoke the team's API keys. Needs a user login
(``warren login --email``): API keys are account-level."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from warren.cli.client.connection import rest
from warren.cli.client.output import JsonOpt, api_errors, out, print_json, print_rows, timestamp
from warren.cli.groups import command_group
from warren.url_path import segment

__all__ = ["app"]

app = command_group(
    "key", "Manage the team's API keys (needs `warren login --email`).", example="warren key create --name ci"
)


@app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create an API key; the key itself is shown only this once."""
    with api_errors():
        r = rest("POST", "/v1/api-keys", user=True, json={"name": name} if name else {})
    if json_out:
        print_json(r)
    else:
        out.print(f"{r['id']}  {r['name']}")
        out.print(f"key: {r['key']}   (shown only once)")


_COLUMNS = ("ID", "NAME", "PREFIX", "CREATED BY", "CREATED", "LAST USED")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (
        r["id"],
        r.get("name", ""),
        r.get("key_prefix", "") + "…",
        r.get("creator_email", ""),
        timestamp(r.get("created_at")),
        timestamp(r.get("last_used")),
    )


@app.command("list")
def key_list(json_out: JsonOpt = False) -> None:
    """List the team's API keys."""
    with api_errors():
        print_rows(rest("GET", "/v1/api-keys", user=True), json_out, _COLUMNS, _cells)


@app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(show_default=False)]) -> None:
    """Revoke an API key."""
    with api_errors():
        rest("DELETE", f"/v1/api-keys/{segment(key_id, 'API key ID')}", user=True)
    out.print(f"revoked {key_id}")
