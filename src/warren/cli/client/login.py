"""``warren login``: save the control plane's URL and credentials for the other commands.

Also what ``warren invitations accept`` and ``warren team create`` share when they put a user
with no team into one: :func:`adopt_team` keeps the new team's token and makes the API key
sandbox work needs (docs/spec.md §2.1: a teamless sign-in has no team, hence no key)."""

from __future__ import annotations

import getpass
import json
import os
from typing import Annotated, Any

import httpx
import typer

from warren.cli.client.output import JsonOpt, api_errors, fail, out, print_json
from warren.sdk import DEFAULT_URL, config_path, error_from_response, load_config_file

__all__ = ["NO_TEAM_YET", "adopt_team", "login", "save_config"]

KEY_NAME = "warren-cli"
NO_TEAM_YET = (
    "You are not in a team yet: accept an invitation with `warren invitations accept ID` "
    "(`warren invitations list` shows them) or create one with `warren team create NAME`."
)


def _post(url: str, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        fail(f"cannot reach Warren at {url}: {e}")
    if r.status_code >= 400:
        with api_errors():
            raise error_from_response(r.status_code, r.content)
    return r.json()


def save_config(data: dict[str, Any]) -> str:
    """Write the config file, created 0600 from the start (the key is never readable by others,
    not even briefly); returns its path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(path, 0o600)
    return str(path)


def adopt_team(token: str, team_id: str, key_name: str = KEY_NAME) -> str:
    """From now on act in ``team_id`` with ``token`` (a JWT for it) and a new API key of it."""
    data = load_config_file()
    url = str(data.get("url") or DEFAULT_URL).rstrip("/")
    key = _post(url, "/v1/api-keys", {"name": key_name}, token)["key"]
    data.update(url=url, token=token, team_id=team_id, api_key=key)
    return save_config(data)


def login(
    url: Annotated[str, typer.Option(help="Control plane URL.", envvar="WARREN_URL")] = DEFAULT_URL,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Store this API key (wrn_…).")] = None,
    email: Annotated[str | None, typer.Option(help="Log in with email and password.")] = None,
    password: Annotated[
        str | None, typer.Option(help="Password (prompted when omitted).", envvar="WARREN_PASSWORD")
    ] = None,
    key_name: Annotated[str, typer.Option(help="Name of the API key created for this machine.")] = KEY_NAME,
    json_out: JsonOpt = False,
) -> None:
    """Save the URL and credentials in ~/.config/warren/config.json (mode 0600).

    With --email the CLI logs in, keeps the user token (needed for hosts and API keys) and
    creates an API key for sandbox work. With --api-key it just stores the key. A user in no
    team yet is logged in without a key: `warren invitations accept ID` or `warren team create
    NAME` makes one.

    Examples:

        warren login --url https://warren.example.com --email me@example.com

        warren login --api-key wrn_0123…
    """
    url = url.rstrip("/")
    data: dict[str, Any] = {"url": url}
    teamless = False
    if email:
        if password is None:
            password = getpass.getpass("Password: ")
        auth = _post(url, "/v1/auth/login", {"email": email, "password": password})
        data.update(token=auth["token"], email=auth["email"], team_id=auth["team_id"])
        teamless = auth["team_id"] is None
        if not api_key and not teamless:
            api_key = _post(url, "/v1/api-keys", {"name": key_name}, auth["token"])["key"]
    elif not api_key:
        fail("give --email (and a password) or --api-key")
    if api_key:
        data["api_key"] = api_key
    path = save_config(data)
    if json_out:
        info: dict[str, Any] = {"url": url, "config": path, "email": data.get("email")}
        print_json(info | {"no_team": True} if teamless else info)
    else:
        who = f" as {data['email']}" if data.get("email") else ""
        out.print(f"Logged in to {url}{who}. Credentials saved in {path}")
        if teamless:
            out.print(NO_TEAM_YET)
