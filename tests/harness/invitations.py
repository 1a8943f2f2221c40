"""The one way tests put a user into a team: the team's owner or admin invites them by email and
they accept as themselves (services/team_invitations.py; adding a member asks them since
session 13).

The steps are written once (``_steps``) and driven by either kind of httpx client:
``join_team`` for a ``httpx.Client`` (a CP process), ``join_team_async`` for an
``httpx.AsyncClient`` (an in-process CP, whose event loop a blocking client would stall).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx

Step = tuple[str, str, dict[str, Any] | None, dict[str, str]]


def _steps(
    team_id: str, email: str, inviter: dict[str, str], invitee: dict[str, str], role: str
) -> Generator[Step, httpx.Response, dict[str, Any]]:
    body = {"email": email} if role == "member" else {"email": email, "role": role}
    r = yield ("POST", f"/v1/teams/{team_id}/members", body, inviter)
    assert r.status_code == 201, r.text
    invitation = r.json()
    assert invitation["team_id"] == team_id and invitation["role"] == role, invitation
    r = yield ("POST", f"/v1/invitations/{invitation['id']}/accept", None, invitee)
    assert r.status_code == 200, r.text
    joined: dict[str, Any] = r.json()
    assert joined["id"] == team_id and joined["role"] == role, joined
    return joined


def _headers(auth: str | dict[str, str]) -> dict[str, str]:
    """A bearer token, or the headers to send as they are."""
    return {"Authorization": f"Bearer {auth}"} if isinstance(auth, str) else auth


def join_team(
    client: httpx.Client,
    team_id: str,
    email: str,
    *,
    inviter: str | dict[str, str],
    invitee: str | dict[str, str],
    role: str = "member",
) -> dict[str, Any]:
    """``inviter`` (a manager of ``team_id``, token or headers) invites ``email``, whose holder
    (``invitee``) accepts; returns the joined team (``TeamWithRole``). The invitee's token
    still names its old team: switch-team to act in the new one."""
    steps = _steps(team_id, email, _headers(inviter), _headers(invitee), role)
    step = next(steps)
    try:
        while True:
            method, path, body, headers = step
            step = steps.send(client.request(method, path, json=body, headers=headers))
    except StopIteration as done:
        result: dict[str, Any] = done.value
        return result


async def join_team_async(
    client: httpx.AsyncClient,
    team_id: str,
    email: str,
    *,
    inviter: str | dict[str, str],
    invitee: str | dict[str, str],
    role: str = "member",
) -> dict[str, Any]:
    """:func:`join_team` on an ``httpx.AsyncClient``."""
    steps = _steps(team_id, email, _headers(inviter), _headers(invitee), role)
    step = next(steps)
    try:
        while True:
            method, path, body, headers = step
            step = steps.send(await client.request(method, path, json=body, headers=headers))
    except StopIteration as done:
        result: dict[str, Any] = done.value
        return result
