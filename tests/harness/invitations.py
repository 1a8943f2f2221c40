"""The one way tests put a user into a team: the team's owner or admin invites them by email and
they accept as themselves (services/team_invitations.py; adding a member asks them since
session 13).

An invitation is accepted only by a verified email (session 14): before accepting, the invitee
opens a verification link as a verification email would bring it (``GET /verify-email``, the
dashboard's real route), minted with the CP's JWT secret in place of the mail the tests' CPs
have no SMTP server to send (an app over ASGI tells its own secret; a CP process runs with
the harness's). tests/integration/cp/api/test_email_verification.py drives the mail itself.

The steps are written once (``_steps``) and driven by either kind of httpx client:
``join_team`` for a ``httpx.Client`` (a CP process), ``join_team_async`` for an
``httpx.AsyncClient`` (an in-process CP, whose event loop a blocking client would stall).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any
from urllib.parse import urlencode

import httpx

from warren import clock, ids
from warren.cp.security import email_tokens

Step = tuple[str, str, dict[str, Any] | None, dict[str, str]]


def _secret_of(client: httpx.Client | httpx.AsyncClient) -> str:
    """The CP's JWT secret: an app over ASGI says its own; a CP over HTTP is the harness's."""
    transport = getattr(client, "_transport", None)
    if isinstance(transport, httpx.ASGITransport):
        secret: str = transport.app.state.settings.jwt_secret  # type: ignore[attr-defined]
        return secret
    from tests.harness.cp import JWT_SECRET  # harness.cp imports this module

    return JWT_SECRET


def verification_path(secret: str, user_id: str, email: str) -> str:
    """The path of the link a verification email would bring ``user_id`` at ``email``."""
    expires = int(clock.time_s()) + 3600  # the CP's clock: a test may have moved it
    token = email_tokens.issue(secret, ids.parse_id(ids.Kind.USER, user_id), email, expires)
    return f"/verify-email?{urlencode({'token': token})}"


def _verify_steps(secret: str, who: dict[str, str]) -> Generator[Step, httpx.Response, None]:
    r = yield ("GET", "/v1/users/me", None, who)
    assert r.status_code == 200, r.text
    me = r.json()
    r = yield ("GET", verification_path(secret, me["user_id"], me["email"]), None, {})
    # 400: verified already (by an earlier link, OAuth or an operator).
    assert r.status_code == 200 or "used already" in r.text, r.text


def _steps(
    secret: str, team_id: str, email: str, inviter: dict[str, str], invitee: dict[str, str], role: str
) -> Generator[Step, httpx.Response, dict[str, Any]]:
    body = {"email": email} if role == "member" else {"email": email, "role": role}
    r = yield ("POST", f"/v1/teams/{team_id}/members", body, inviter)
    assert r.status_code == 201, r.text
    invitation = r.json()
    assert invitation["team_id"] == team_id and invitation["role"] == role, invitation
    yield from _verify_steps(secret, invitee)
    r = yield ("POST", f"/v1/invitations/{invitation['id']}/accept", None, invitee)
    assert r.status_code == 200, r.text
    joined: dict[str, Any] = r.json()
    assert joined["id"] == team_id and joined["role"] == role, joined
    return joined


def _headers(auth: str | dict[str, str]) -> dict[str, str]:
    """A bearer token, or the headers to send as they are."""
    return {"Authorization": f"Bearer {auth}"} if isinstance(auth, str) else auth


def _drive(client: httpx.Client, steps: Generator[Step, httpx.Response, Any]) -> Any:
    step = next(steps)
    try:
        while True:
            method, path, body, headers = step
            step = steps.send(client.request(method, path, json=body, headers=headers))
    except StopIteration as done:
        return done.value


async def _drive_async(client: httpx.AsyncClient, steps: Generator[Step, httpx.Response, Any]) -> Any:
    step = next(steps)
    try:
        while True:
            method, path, body, headers = step
            step = steps.send(await client.request(method, path, json=body, headers=headers))
    except StopIteration as done:
        return done.value


def verify_email(client: httpx.Client, who: str | dict[str, str]) -> None:
    """The holder of ``who`` (token or headers) opens their verification link."""
    _drive(client, _verify_steps(_secret_of(client), _headers(who)))


async def verify_email_async(client: httpx.AsyncClient, who: str | dict[str, str]) -> None:
    """:func:`verify_email` on an ``httpx.AsyncClient``."""
    await _drive_async(client, _verify_steps(_secret_of(client), _headers(who)))


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
    (``invitee``) verifies their email and accepts; returns the joined team (``TeamWithRole``).
    The invitee's token still names its old team: switch-team to act in the new one."""
    steps = _steps(_secret_of(client), team_id, email, _headers(inviter), _headers(invitee), role)
    result: dict[str, Any] = _drive(client, steps)
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
    steps = _steps(_secret_of(client), team_id, email, _headers(inviter), _headers(invitee), role)
    result: dict[str, Any] = await _drive_async(client, steps)
    return result
