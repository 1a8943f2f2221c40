"""Session 14's hostile tenant against another team's user in the dashboard: an invitation is the
one place where text Mallory chooses (her team's name, her email as the inviter) is drawn in the
dashboard of a user of another team who never agreed to anything.

Held: her markup in the inviter's email (free text but for one ``@``) and an apostrophe in her
team's name show as text in the victim's invitation list, its confirm dialog and the toast after
joining; nothing runs, nothing is fetched from another origin.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tests.harness.cp import PASSWORD
from tests.harness.invitations import verify_email
from tests.harness.platform import Platform
from tests.security.test_attack_session12_dashboard import ARGS, CHROMIUM, EVIL, PWN, Victim, _clean

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# What Mallory signs up with: markup without spaces, which the email rule (services/emails.py:
# no control, format or space characters, one script) lets through as printable ASCII.
MALLORY_EMAIL = f"\"'><img/src={EVIL}/i/onerror={PWN}><script>{PWN}</script>{uuid.uuid4().hex[:8]}@x.example"
TEAM_NAME = "Payroll' autofocus onfocus 'x"  # team names: letters, digits, spaces and _ - @ '


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


def _signup(url: str, email: str, name: str) -> str:
    body = {"email": email, "password": PASSWORD, "name": name}
    r = httpx.post(f"{url}/v1/auth/signup", json=body, timeout=60)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def test_an_invitation_from_another_team_is_only_text(browser: Browser, platform: Platform) -> None:
    url = platform.url
    victim_email = f"victor-{uuid.uuid4().hex[:8]}@example.com"
    victim = _signup(url, victim_email, "Victor")
    with httpx.Client(base_url=url, timeout=60) as v:
        verify_email(v, victim)  # accepting an invitation needs a verified email (session 14)
    mallory = _signup(url, MALLORY_EMAIL, f"<b>{PWN}</b>")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mallory}"}, timeout=60) as m:
        r = m.post("/v1/teams", json={"name": TEAM_NAME})
        assert r.status_code == 201, r.text
        team_id = r.json()["id"]
        r = m.post("/v1/auth/switch-team", json={"team_id": team_id})
        assert r.status_code == 200, r.text
        m.headers["Authorization"] = f"Bearer {r.json()['token']}"
        r = m.post(f"/v1/teams/{team_id}/members", json={"email": victim_email, "role": "admin"})
        assert r.status_code == 201, r.text
    ctx = await browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(60_000)
    try:
        page = await ctx.new_page()
        v = Victim(page, url)
        page.on("dialog", lambda d: v.dialogs.append(d.message))
        ctx.on("request", lambda req: v.requests.append(req.url))
        await page.goto("/login")
        await page.fill("#email", victim_email)
        await page.fill("#password", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_url("**/dashboard/sandboxes")
        await page.goto("/dashboard/team")
        row = page.locator("#my-invitations-table tbody tr").first
        assert TEAM_NAME in await row.locator(".invitation-team").inner_text()
        assert MALLORY_EMAIL in await row.inner_text()
        await _clean(v)
        await row.locator("button", has_text="Accept").click()
        assert await page.locator("#confirm-dialog-title").inner_text() == f"Join {TEAM_NAME}?"
        assert MALLORY_EMAIL in await page.locator("#confirm-dialog-message").inner_text()
        await _clean(v)
        await page.click("#confirm-dialog-ok")
        await page.wait_for_selector(".toast")
        assert TEAM_NAME in await page.locator(".toast").first.inner_text()
        await page.goto("/dashboard/team")
        await _clean(v)
    finally:
        await ctx.close()
