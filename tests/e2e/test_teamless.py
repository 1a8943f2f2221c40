"""Signing in with no live team (session 14, docs/spec.md §2.1): the dashboard lands on the
teamless page (pending invitations, a page at a time, and "create a team"), offers no team
switcher and no team pages there, and accepting or creating puts the user in that team."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from warren import ids
from warren.cp.services import team_deletion
from warren.cp.services import team_invitations as invitations_svc

from .conftest import Account, LiveCP, Web

pytestmark = pytest.mark.e2e

WELCOME = "/dashboard/welcome"


async def _teamless(live: LiveCP, name: str) -> Account:
    """An account whose only team was deleted."""
    acct = await live.signup(name)
    await team_deletion.delete_team(live.engine, live.pool, live.ctx(acct), acct.team_uuid)
    return acct


async def _sign_in(web: Web, account: Account) -> Page:
    page = await web.new_page()
    await page.goto("/login")
    await page.fill("#email", account.email)
    await page.fill("#password", account.password)
    await page.click("#login-submit")
    await page.wait_for_url(f"**{WELCOME}")
    return page


async def _invite(live: LiveCP, owner: Account, team_id: str, guest: Account) -> str:
    team = ids.parse_id(ids.Kind.TEAM, team_id)
    inv = await invitations_svc.invite(live.engine, live.ctx(owner, team_id), team, guest.email, None)
    return inv.id


async def test_teamless_sign_in_lands_on_invitations_and_accepting_enters_the_team(
    web: Web, live: LiveCP
) -> None:
    owner = await live.signup("Welcoming Owner")
    other = await live.signup("Other Owner")
    guest = await _teamless(live, "Teamless Theo")
    await _invite(live, owner, owner.team_id, guest)
    await _invite(live, other, other.team_id, guest)
    page = await _sign_in(web, guest)
    await expect(page.get_by_test_id("teamless-note")).to_contain_text(
        "accept an invitation or create a team"
    )
    # No team switcher, no team pages offered.
    await expect(page.locator("#team-button")).to_have_count(0)
    nav = page.get_by_role("navigation", name="Main")
    for label in ("Sandboxes", "Templates", "API Keys", "Team"):
        await expect(nav.get_by_role("link", name=label, exact=True)).to_have_count(0)
    rows = page.locator("#my-invitations-table tbody tr")
    await expect(rows).to_have_count(2)
    await web.shot(page, "teamless-landing")
    # "/" and "/login" bring a teamless session back here.
    await page.goto("/")
    await page.wait_for_url(f"**{WELCOME}")

    await rows.filter(has_text="Other Owner's Team").get_by_role("button", name="Decline").click()
    await expect(page.locator(".toast")).to_contain_text("Invitation declined")
    await expect(rows).to_have_count(1)
    await rows.filter(has_text="Welcoming Owner's Team").get_by_role("button", name="Accept").click()
    confirm = page.locator("#confirm-dialog")
    await confirm.get_by_role("button", name="Join team").click()
    await page.wait_for_url("**/dashboard/sandboxes")
    await expect(page.get_by_test_id("current-team")).to_have_text("Welcoming Owner's Team")
    # Acting in the team now: the welcome page sends the session home; the invitations page is
    # an ordinary page of the team's layout.
    await page.goto(WELCOME)
    await page.wait_for_url("**/dashboard/sandboxes")
    await nav.get_by_role("link", name="Invitations").click()
    await page.wait_for_url("**/dashboard/invitations")
    await expect(page.get_by_role("heading", name="Invitations", exact=True)).to_be_visible()
    await expect(page.locator("#my-invitations")).to_contain_text("No invitations")
    await expect(page.get_by_test_id("current-team")).to_have_text("Welcoming Owner's Team")
    await expect(page.locator("#welcome-create-team")).to_have_count(0)


async def test_teamless_user_creates_a_team_from_the_landing_page(web: Web, live: LiveCP) -> None:
    guest = await _teamless(live, "Founder Fay")
    page = await _sign_in(web, guest)
    await expect(page.locator("#my-invitations")).to_contain_text("No invitations")
    # The dashboard's team actions refuse the teamless session as the API does.
    codes = await page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const post = (url, body) => fetch(url, {method: 'POST', body: JSON.stringify(body),
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}});
            const answers = await Promise.all([
                post('/dashboard/actions/keys', {name: 'k'}),
                post('/dashboard/actions/sandboxes', {}),
                post('/dashboard/actions/team/rename', {name: 'owned'}),
                post('/dashboard/actions/team/members', {email: 'a@b.c'}),
                post('/dashboard/actions/team/leave', {}),
                fetch('/dashboard/actions/users/search?email=foun'),
            ]);
            return Promise.all(answers.map(async r => [r.status, (await r.json()).error.code]));
        }"""
    )
    assert codes == [[403, "no_team"]] * 6, codes
    await page.locator("#welcome-create-team").get_by_label("Team name").fill("Fresh Start")
    await page.locator("#welcome-create-team").get_by_role("button", name="Create team").click()
    await page.wait_for_url("**/dashboard/sandboxes")
    await expect(page.get_by_test_id("current-team")).to_have_text("Fresh Start")


async def test_the_landing_page_pages_through_many_invitations(web: Web, live: LiveCP) -> None:
    """26 invitations, 25 a page: "Older invitations" shows the last, "Newest" goes back."""
    guest = await _teamless(live, "Popular Pat")
    made = []
    for n in range(3):
        owner = await live.signup(f"Owner {n}")
        teams = [owner.team_id] + [await live.create_team(owner, f"Team {n}-{k}") for k in range(9)]
        for team_id in teams:
            if len(made) < 26:
                made.append(await _invite(live, owner, team_id, guest))
    page = await _sign_in(web, guest)
    rows = page.locator("#my-invitations-table tbody tr")
    await expect(rows).to_have_count(25)
    assert await rows.first.get_attribute("data-row-id") == made[-1]  # newest first
    await page.get_by_test_id("invitations-older").click()
    await expect(rows).to_have_count(1)
    assert await rows.first.get_attribute("data-row-id") == made[0]
    await expect(page.get_by_test_id("invitations-older")).to_have_count(0)
    await page.get_by_test_id("invitations-newest").click()
    await expect(rows).to_have_count(25)
    # A mangled cursor starts again from the newest.
    await page.goto(f"{WELCOME}?cursor=bogus")
    await page.wait_for_url(f"**{WELCOME}")
    await expect(rows).to_have_count(25)
    # In a team, the invitations page pages the same list (the team page shows the newest 100).
    await page.locator("#my-invitations-table tbody tr").first.get_by_role("button", name="Accept").click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Join team").click()
    await page.wait_for_url("**/dashboard/sandboxes")
    newest = await _invite(live, owner, teams[-1], guest)  # 26 pending again
    await page.goto("/dashboard/invitations")
    await expect(rows).to_have_count(25)
    assert await rows.first.get_attribute("data-row-id") == newest
    await page.get_by_test_id("invitations-older").click()
    await page.wait_for_url("**/dashboard/invitations?cursor=*")
    await expect(rows).to_have_count(1)
    assert await rows.first.get_attribute("data-row-id") == made[0]
