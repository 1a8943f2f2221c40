"""Verified emails (docs/auth.md "Verified emails"): a password sign-up is mailed a link through
a real SMTP server (aiosmtpd on 127.0.0.1), the link verifies the account once, an expired or
used link is refused, resending is rate limited, and only then does an invitation accept.
An operator verifies through the admin route."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from typer.testing import CliRunner

from tests.harness.machine import free_port
from tests.integration.cp.api.conftest import PUBLIC_URL, User, make_admin, make_settings, signup
from warren import ids
from warren.cli import admin as admin_cli
from warren.cp.app import create_app
from warren.cp.services import email_verification


class Inbox:
    """aiosmtpd's handler: every message the server accepts, by recipient."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]

    async def wait_for(self, address: str, count: int = 1) -> list[Message]:
        deadline = time.monotonic() + 60
        while len(self.to(address)) < count:
            assert time.monotonic() < deadline, f"no mail to {address} within 60 s"
            await asyncio.sleep(0.1)
        return self.to(address)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
async def mail_app(db_url: str, smtp: tuple[Inbox, int]) -> AsyncIterator[FastAPI]:
    settings = make_settings(db_url, smtp_url=f"smtp://127.0.0.1:{smtp[1]}", smtp_from="cp@cp.test")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def mc(mail_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=mail_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
        yield c


def _link_path(message: Message) -> str:
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    found = re.search(re.escape(PUBLIC_URL) + r"(/verify-email\?token=[0-9a-f.]+)", body.decode())
    assert found, body
    return found.group(1)


async def _accept_invite(mc: httpx.AsyncClient, owner: User, who: User) -> httpx.Response:
    r = await mc.post(f"/v1/teams/{owner.team_id}/members", json={"email": who.email}, headers=owner.h)
    assert r.status_code == 201, r.text
    return await mc.post(f"/v1/invitations/{r.json()['id']}/accept", headers=who.h)


async def test_the_mailed_link_verifies_once_and_then_invitations_accept(
    mc: httpx.AsyncClient, smtp: tuple[Inbox, int]
) -> None:
    inbox, _ = smtp
    owner = await signup(mc, "Owner", verified=False)
    hire = await signup(mc, "Hire", verified=False)
    [mail] = await inbox.wait_for(hire.email)
    assert mail["From"] == "cp@cp.test" and "Verify" in mail["Subject"]
    r = await _accept_invite(mc, owner, hire)
    assert r.status_code == 403 and r.json()["error"]["code"] == "email_unverified", r.text
    path = _link_path(mail)
    r = await mc.get(path)
    assert r.status_code == 200 and hire.email in r.text and "verified" in r.text, r.text
    r = await mc.get(path)  # used: refused
    assert r.status_code == 400 and "used already" in r.text, r.text
    search = await mc.get("/v1/users/search", params={"email": hire.email}, headers=owner.h)
    assert [(m["email"], m["verified"]) for m in search.json()] == [(hire.email, True)]
    r = await _accept_invite(mc, owner, hire)
    assert r.status_code == 200 and r.json()["id"] == owner.team_id, r.text
    r = await mc.post("/v1/users/me/verify-email", headers=hire.h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_verified", r.text


async def test_expired_and_foreign_links_are_refused(mc: httpx.AsyncClient, mail_app: FastAPI) -> None:
    settings = mail_app.state.settings
    a = await signup(mc, "Ada", verified=False)
    b = await signup(mc, "Bea", verified=False)
    a_id = ids.parse_id(ids.Kind.USER, a.user_id)
    expired = email_verification.link(settings, a_id, a.email, expires=int(time.time()) - 1)
    r = await mc.get(expired.removeprefix(PUBLIC_URL))
    assert r.status_code == 400 and "expired" in r.text, r.text
    # A link for Ada's id at Bea's address (or Bea's id at Ada's) matches neither account.
    for uid, email in ((a_id, b.email), (ids.parse_id(ids.Kind.USER, b.user_id), a.email)):
        r = await mc.get(email_verification.link(settings, uid, email).removeprefix(PUBLIC_URL))
        assert r.status_code == 400 and "invalid verification link" in r.text, r.text
    for who in (a, b):
        me = await mc.get("/v1/users/search", params={"email": who.email}, headers=who.h)
        assert me.json()[0]["verified"] is False


async def test_resending_is_rate_limited(mc: httpx.AsyncClient, smtp: tuple[Inbox, int]) -> None:
    inbox, _ = smtp
    u = await signup(mc, "Resender", verified=False)
    await inbox.wait_for(u.email)
    statuses = [(await mc.post("/v1/users/me/verify-email", headers=u.h)).status_code for _ in range(8)]
    # The sign-up's mail counts: 4 more are sent, then 429 with Retry-After.
    assert statuses == [202] * (email_verification.MAILS_PER_HOUR - 1) + [429] * 4, statuses
    mails = await inbox.wait_for(u.email, email_verification.MAILS_PER_HOUR)
    assert len(mails) == email_verification.MAILS_PER_HOUR
    # Any of the links verifies (each names the same address); the next is then used.
    assert (await mc.get(_link_path(mails[-1]))).status_code == 200
    assert (await mc.get(_link_path(mails[0]))).status_code == 400


async def test_an_operator_verifies_through_the_admin_route(mc: httpx.AsyncClient, mail_app: FastAPI) -> None:
    admin = await signup(mc, "Admin", verified=False)
    await make_admin(mail_app.state.engine, admin)
    u = await signup(mc, "Unmailed", verified=False)
    r = await mc.post("/v1/admin/users/verify-email", json={"email": u.email}, headers=u.h)
    assert r.status_code == 403, r.text
    r = await mc.post("/v1/admin/users/verify-email", json={"email": " " + u.email.upper()}, headers=admin.h)
    assert r.status_code == 204, r.text
    r = await mc.post("/v1/admin/users/verify-email", json={"email": "nobody@cp.test"}, headers=admin.h)
    assert r.status_code == 404, r.text
    r = await _accept_invite(mc, admin, u)
    assert r.status_code == 200, r.text


async def test_warren_admin_user_verify(
    mc: httpx.AsyncClient, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an operator runs on a platform without SMTP (docs/operations.md)."""
    owner = await signup(mc, "Op Owner")
    u = await signup(mc, "Op Verified", verified=False)
    monkeypatch.setenv("WARREN_DATABASE_URL", db_url)
    runner = CliRunner()
    done = await asyncio.to_thread(runner.invoke, admin_cli.app, ["user", "verify", u.email.upper()])
    assert done.exit_code == 0 and "is verified" in done.output, done.output
    missing = await asyncio.to_thread(runner.invoke, admin_cli.app, ["user", "verify", "nobody@cp.test"])
    assert missing.exit_code == 1, missing.output
    r = await _accept_invite(mc, owner, u)
    assert r.status_code == 200, r.text
