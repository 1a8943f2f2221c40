"""How the client commands reach the control plane.

The URL and credentials come from ``WARREN_URL`` / ``WARREN_API_KEY`` / ``WARREN_ACCESS_TOKEN``
or the file written by ``warren login`` (``ConnectionConfig.resolve``). Sandbox work goes
through the SDK (``open_sandbox``); listings and account-level calls are plain REST calls
(``rest``) whose errors become the SDK's typed exceptions.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from warren import url_path
from warren.cli.client.output import fail
from warren.sdk import ConnectionConfig, Sandbox, error_body, error_from_response, load_config_file

__all__ = ["SandboxArg", "UserOpt", "connection_config", "open_sandbox", "rest", "rest_answer"]


def _sandbox_id(value: str) -> str:
    try:
        return url_path.sandbox_id(value)
    except url_path.PathSegmentError as e:
        raise typer.BadParameter(str(e)) from None


SandboxArg = Annotated[
    str, typer.Argument(help="Sandbox ID (sb-…).", show_default=False, callback=_sandbox_id)
]
UserOpt = Annotated[
    str | None,
    typer.Option("--user", "-u", help="As this user of the sandbox (default: the template's)."),
]


def connection_config(*, user: bool = False) -> ConnectionConfig:
    cfg = ConnectionConfig.resolve()
    if user:
        # Hosts and API keys are account-level: they need a user token, not an API key.
        cfg = ConnectionConfig(url=cfg.url, access_token=_user_token(), request_timeout=cfg.request_timeout)
    elif not cfg.api_key and not cfg.access_token:
        fail("not logged in: run `warren login` or set WARREN_API_KEY")
    return cfg


def _user_token() -> str:
    token = os.environ.get("WARREN_ACCESS_TOKEN") or load_config_file().get("token")
    if not token:
        fail("this command needs a user login: run `warren login --email …` (API keys are not enough)")
    return str(token)


def rest(method: str, path: str, *, user: bool = False, **kwargs: Any) -> Any:
    """One REST call; errors become the SDK's typed exceptions."""
    return rest_answer(method, path, user=user, **kwargs)[0]


def rest_answer(method: str, path: str, *, user: bool = False, **kwargs: Any) -> tuple[Any, httpx.Headers]:
    """One REST call's JSON and its headers (a page's ``X-Next-Cursor``); as :func:`rest`."""
    cfg = connection_config(user=user)
    headers = cfg.auth_headers()
    try:
        with httpx.stream(
            method, cfg.url + path, headers=headers, timeout=cfg.request_timeout, **kwargs
        ) as r:
            if r.status_code >= 400:  # of an error, its envelope: not a body without end
                raise error_from_response(r.status_code, error_body(r.iter_bytes()))
            content = r.read()
    except httpx.HTTPError as e:
        fail(f"cannot reach Warren at {cfg.url}: {e}")
    return (json.loads(content) if content else None), r.headers


@contextlib.contextmanager
def open_sandbox(sandbox_id: str) -> Iterator[Sandbox]:
    """The sandbox through the SDK, its connections released on leaving the block (the sandbox
    keeps running: ``with Sandbox`` would kill it)."""
    cfg = connection_config()
    # The CLI never resumes behind the user's back: a paused sandbox answers 409.
    sbx = Sandbox.connect(
        sandbox_id, resume=False, url=cfg.url, api_key=cfg.api_key, access_token=cfg.access_token
    )
    try:
        yield sbx
    finally:
        sbx.close()
