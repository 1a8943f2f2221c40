"""``warren invitations``: the invitations to teams waiting for you, and your answer (docs/auth.md
"Invitations"). Needs a user login (``warren login --email``), with or without a team: it is
how a user in no team gets into one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from warren.cli.client.connection import rest, rest_answer
from warren.cli.client.login import adopt_team
from warren.cli.client.output import JsonOpt, api_errors, out, print_json, print_rows, timestamp
from warren.cli.groups import command_group
from warren.sdk import PageCursors, WarrenError, load_config_file
from warren.url_path import segment

__all__ = ["app"]

app = command_group(
    "invitations",
    "Answer the invitations to teams waiting for you.",
    example="warren invitations accept inv-…",
)

InvitationArg = Annotated[str, typer.Argument(help="Invitation ID (inv-…).", show_default=False)]
_COLUMNS = ("ID", "TEAM", "ROLE", "INVITED BY", "EXPIRES")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (
        r["id"],
        f"{r['team_name']} ({r['team_id']})",
        r["role"],
        r["invited_by"],
        timestamp(r["expires_at"]),
    )


# The pages `list` follows, of the server's 100 each (team_invitations.MAX_LISTED): 10 000
# invitations, far past any one person's. A server that names more, or a page again, is refused.
MAX_PAGES = 100


@app.command("list")
def invitations_list(json_out: JsonOpt = False) -> None:
    """Your pending invitations, newest first (every page of them)."""
    rows: list[dict[str, Any]] = []
    cursor = ""
    cursors = PageCursors("your invitations", MAX_PAGES, first=cursor)
    with api_errors():
        while True:
            page, next_cursor = _page(cursor)
            rows += page
            if next_cursor is None:
                break
            cursor = cursors.follow(next_cursor)
    print_rows(rows, json_out, _COLUMNS, _cells)


def _page(cursor: str) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the list and the next page's cursor (the ``X-Next-Cursor`` header)."""
    page, headers = rest_answer(
        "GET", "/v1/invitations", user=True, params={"cursor": cursor} if cursor else None
    )
    if not isinstance(page, list):
        raise WarrenError("the server's page of invitations is no list", code="bad_response")
    return page, headers.get("X-Next-Cursor")


@app.command("accept")
def invitations_accept(invitation_id: InvitationArg, json_out: JsonOpt = False) -> None:
    """Join the team. Logged in without a team, the CLI then acts in it (a new API key)."""
    with api_errors():
        joined = rest("POST", f"/v1/invitations/{segment(invitation_id, 'invitation ID')}/accept", user=True)
    switched = not load_config_file().get("team_id")
    if switched:
        adopt_team(joined["token"], joined["id"])
    if json_out:
        print_json({k: v for k, v in joined.items() if k != "token"} | {"switched": switched})
        return
    out.print(f"Joined {joined['name']} ({joined['id']}) as {joined['role']}.")
    if switched:
        out.print("The CLI now acts in this team.")


@app.command("decline")
def invitations_decline(invitation_id: InvitationArg) -> None:
    """Refuse the invitation (it is deleted)."""
    with api_errors():
        rest("POST", f"/v1/invitations/{segment(invitation_id, 'invitation ID')}/decline", user=True)
    out.print(f"Declined {invitation_id}.")
