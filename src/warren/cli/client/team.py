"""``warren team``: the teams you belong to, and a team of your own (docs/auth.md). Needs a user
login (``warren login --email``), with or without a team: creating one is how a user in no team
gets started."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from warren.cli.client.connection import rest
from warren.cli.client.login import adopt_team
from warren.cli.client.output import JsonOpt, api_errors, out, print_json, print_rows, timestamp
from warren.cli.groups import command_group
from warren.sdk import load_config_file

__all__ = ["app"]

app = command_group("team", "Your teams.", example='warren team create "Platform Team"')

_COLUMNS = ("ID", "NAME", "ROLE", "CREATED")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (r["id"], r["name"], r["role"], timestamp(r.get("created_at")))


@app.command("list")
def team_list(json_out: JsonOpt = False) -> None:
    """The teams you belong to, in join order."""
    with api_errors():
        print_rows(rest("GET", "/v1/teams", user=True), json_out, _COLUMNS, _cells)


@app.command("create")
def team_create(
    name: Annotated[str, typer.Argument(help="The team's name.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Create a team you own. Logged in without a team, the CLI then acts in it (a new API key)."""
    with api_errors():
        team = rest("POST", "/v1/teams", user=True, json={"name": name})
        switched = not load_config_file().get("team_id")
        if switched:
            auth = rest("POST", "/v1/auth/switch-team", user=True, json={"team_id": team["id"]})
            adopt_team(auth["token"], team["id"])
    if json_out:
        print_json(team | {"switched": switched})
        return
    out.print(f"Created {team['name']} ({team['id']}).")
    if switched:
        out.print("The CLI now acts in this team.")
