"""``warren login``: save the control plane's URL and credentials for the other commands."""

from __future__ import annotations

import getpass
import json
import os
from typing import Annotated, Any

import httpx
import typer

from warren.cli.client.output import JsonOpt, api_errors, fail, out, print_json
from warren.sdk import DEFAULT_URL, config_path, error_from_response

__all__ = ["login"]


def login(
    url: Annotated[str, typer.Option(help="Control plane URL.", envvar="WARREN_URL")] = DEFAULT_URL,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Store this API key (wrn_…).")] = None,
    email: Annotated[str | None, typer.Option(help="Log in with email and password.")] = None,
    password: Annotated[
        str | None, typer.Option(help="Password (prompted when omitted).", envvar="WARREN_PASSWORD")
    ] = None,
    key_name: Annotated[
        str, typer.Option(help="Name of the API key created for this machine.")
    ] = "warren-cli",
    json_out: JsonOpt = False,
) -> None:
    """Save the URL and credentials in ~/.config/warren/config.json (mode 0600).

    With --email the CLI logs in, keeps the user token (needed for hosts and API keys) and
    creates an API key for sandbox work. With --api-key it just stores the key.

    Examples:

        warren login --url https://warren.example.com --email me@example.com

        warren login --api-key wrn_0123…
    """
    url = url.rstrip("/")
    data: dict[str, Any] = {"url": url}
    if email:
        if password is None:
            password = getpass.getpass("Password: ")
        try:
            r = httpx.post(f"{url}/v1/auth/login", json={"email": email, "password": password}, timeout=30)
        except httpx.HTTPError as e:
            fail(f"cannot reach Warren at {url}: {e}")
        if r.status_code >= 400:
            with api_errors():
                raise error_from_response(r.status_code, r.content)
        auth = r.json()
        data.update(token=auth["token"], email=auth["email"], team_id=auth["team_id"])
        if not api_key:
            k = httpx.post(
                f"{url}/v1/api-keys",
                json={"name": key_name},
                headers={"Authorization": f"Bearer {auth['token']}"},
                timeout=30,
            )
            if k.status_code >= 400:
                with api_errors():
                    raise error_from_response(k.status_code, k.content)
            api_key = k.json()["key"]
    elif not api_key:
        fail("give --email (and a password) or --api-key")
    data["api_key"] = api_key
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(path, 0o600)
    if json_out:
        print_json({"url": url, "config": str(path), "email": data.get("email")})
    else:
        who = f" as {data['email']}" if data.get("email") else ""
        out.print(f"Logged in to {url}{who}. Credentials saved in {path}")
