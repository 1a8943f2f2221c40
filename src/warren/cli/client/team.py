"""``warren team``: the teams you belong to, and a team of your own (docs/auth.md). Needs a user
login (``warren login --email``), with or without a team: creating one is how a user in no team
gets started."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from warren.cli.client.connection import rest
from warren.cli.client.login import adopt_team
from warren.cli.client.output import JsonOpt, api_errors, fail, out, print_json, print_rows, timestamp
from warren.cli.groups import command_group
from warren.sdk import load_config_file
from warren.url_path import segment

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


member_app = command_group(
    "member",
    "The members of the team the CLI acts in.",
    example="warren team member remove usr-… --revoke-keys",
)
app.add_typer(member_app)

_MEMBER_COLUMNS = ("USER ID", "NAME", "EMAIL", "ROLE", "JOINED")


def _team_path() -> str:
    team_id = load_config_file().get("team_id")
    if not team_id:
        fail("the CLI acts in no team: `warren team create` or `warren invitations accept` first")
    return f"/v1/teams/{segment(team_id, 'team ID')}"


@member_app.command("list")
def member_list(json_out: JsonOpt = False) -> None:
    """The team's members, in join order."""
    with api_errors():
        rows = rest("GET", _team_path() + "/members", user=True)
    print_rows(
        rows, json_out, _MEMBER_COLUMNS,
        lambda r: (r["user_id"], r["name"], r["email"], r["role"], timestamp(r.get("joined_at"))),
    )  # fmt: skip


@member_app.command("remove")
def member_remove(
    user: Annotated[str, typer.Argument(help="The member's user ID (usr-…) or email.", show_default=False)],
    revoke_keys: Annotated[
        bool, typer.Option("--revoke-keys", help="Also revoke every API key they created (same transaction).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove a member (owner or admin). The API keys they created stay the team's unless
    --revoke-keys; without it the keys still live are listed."""
    path = _team_path()
    with api_errors():
        user_id = _user_id(path, user)
        done = rest(
            "DELETE",
            f"{path}/members/{user_id}",
            user=True,
            params={"revoke_keys": "true"} if revoke_keys else None,
        )
        if done is None:  # 204: the keys they made stay the team's; list the ones still live
            keys = [k for k in rest("GET", "/v1/api-keys", user=True) if k.get("created_by") == user_id]
            done = {"user_id": user_id, "revoked_keys": [], "live_keys": keys}
    if json_out:
        print_json(done)
        return
    out.print(f"Removed {user}.")
    for title, keys in (("Revoked", done["revoked_keys"]), ("Still live (the team's)", done["live_keys"])):
        if keys:
            out.print(f"{title} API keys they created:")
            for k in keys:
                out.print(f"  {k['id']}  {k['key_prefix']}…  {k['name']}", highlight=False, markup=False)
    if done["live_keys"]:
        out.print("Revoke one with `warren key revoke <id>`.")


def _user_id(path: str, user: str) -> str:
    """``user`` as a user ID: an email is looked up among the team's members."""
    if "@" not in user:
        return user
    for m in rest("GET", path + "/members", user=True):
        if m["email"].lower() == user.lower():
            return str(m["user_id"])
    fail(f"{user} is not a member of this team")
