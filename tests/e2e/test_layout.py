"""The dashboard shell (issue 6 item 2 and 7; SPEC §8.2): sidebar team switcher (list, switch,
create), navigation rules (Hosts only for BYOC teams, disabled for members; Admin for platform
admins), the user footer (SEED: name, falling back to email), keyboard-usable dialogs and a
phone-width layout."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from .conftest import PHONE, LiveCP, Web

pytestmark = pytest.mark.e2e


async def test_footer_shows_name_falling_back_to_email(web: Web, live: LiveCP) -> None:
    """SEED §8.2 "The user footer shows name, falling back to email"."""
    named = await live.signup("Katherine Johnson")
    page = await web.signed_in_page(named)
    await expect(page.get_by_test_id("user-name")).to_have_text("Katherine Johnson")
    await expect(page.locator(".user-email")).to_have_text(named.email)

    nameless = await live.signup("Placeholder")
    # A user without a name (e.g. an OAuth account whose provider had none) shows the email.
    await live.sql("UPDATE users SET name = '' WHERE email = :e", e=nameless.email)
    page2 = await web.signed_in_page(nameless)
    await expect(page2.get_by_test_id("user-name")).to_have_text(nameless.email)
    await web.shot(page2, "footer-email-fallback")


async def test_team_switcher_lists_switches_and_creates_teams(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Mary Jackson")
    await live.create_team(acct, "Wind Tunnel")
    page = await web.signed_in_page(acct)
    await expect(page.get_by_test_id("current-team")).to_have_text("Mary Jackson's Team")

    await page.click("#team-button")
    menu = page.locator("#team-menu")
    await expect(menu).to_be_visible()
    await expect(menu.locator("[data-switch-team]")).to_have_count(2)
    await web.shot(page, "team-switcher")
    await menu.get_by_role("menuitem", name="Wind Tunnel").click()
    await expect(page.get_by_test_id("current-team")).to_have_text("Wind Tunnel")
    await expect(page.locator(".toast")).to_contain_text("Switched to Wind Tunnel")

    # Create a team from the switcher: it becomes the current team. Names may contain
    # hyphens, @ and apostrophes (SEED team-name rule).
    await page.click("#team-button")
    await page.get_by_role("menuitem", name="Create team").click()
    dialog = page.locator("#create-team-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Team name")).to_be_focused()
    await dialog.get_by_label("Team name").fill("Bad/Name")
    await dialog.get_by_role("button", name="Create team").click()
    await expect(dialog.locator(".form-error")).to_contain_text("invalid team name")
    await web.shot(page, "create-team-error")
    await dialog.get_by_label("Team name").fill("O'Brien-Lab @ HQ")
    await dialog.get_by_role("button", name="Create team").click()
    await expect(page.get_by_test_id("current-team")).to_have_text("O'Brien-Lab @ HQ")
    # The reloaded page shows its team while it is still parsing: its deferred script (the
    # menu's handler) runs by its load event, which the click must not beat, or the menu stays
    # closed (the count below counts the menu's items open or not).
    await page.wait_for_load_state()
    await page.click("#team-button")
    await expect(page.locator("#team-menu")).to_be_visible()
    await expect(page.locator("#team-menu [data-switch-team]")).to_have_count(3)


async def test_hosts_nav_only_for_byoc_teams_and_disabled_for_members(web: Web, live: LiveCP) -> None:
    """SPEC §8.2: Hosts appears only when the current team is BYOC, and is disabled for role
    member with the hint "Available to team owners and admins only"."""
    owner = await live.signup("Owner Byoc")
    member = await live.signup("Member Byoc")
    await live.add_member(owner, owner.team_id, member)

    page = await web.signed_in_page(owner)
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Hosts")).to_have_count(0)  # not a BYOC team yet
    await expect(nav.get_by_role("link", name="Admin")).to_have_count(0)  # not a platform admin

    await live.enable_byoc(owner.team_id)
    await page.reload()
    await expect(nav.get_by_role("link", name="Hosts")).to_be_visible()

    member_page = await web.signed_in_page(member)
    # The member's own team is first (default); switch to the BYOC team.
    await member_page.click("#team-button")
    await member_page.get_by_role("menuitem", name="Owner Byoc's Team").click()
    await expect(member_page.get_by_test_id("current-team")).to_have_text("Owner Byoc's Team")
    mnav = member_page.get_by_role("navigation", name="Main")
    await expect(mnav.get_by_role("link", name="Hosts")).to_have_count(0)
    disabled = member_page.get_by_test_id("nav-hosts-disabled")
    await expect(disabled).to_have_attribute("aria-disabled", "true")
    await expect(mnav).to_contain_text("Available to team owners and admins only")
    await web.shot(member_page, "member-hosts-disabled")


async def test_admin_link_only_for_platform_admins(web: Web, live: LiveCP) -> None:
    admin = await live.signup("Ada Admin")
    await live.make_admin(admin)
    page = await web.signed_in_page(admin)
    await page.get_by_role("link", name="Admin").click()
    await page.wait_for_url("**/admin")
    await expect(page.get_by_role("heading", name="Platform admin")).to_be_visible()

    plain = await live.signup("Plain User")
    page2 = await web.signed_in_page(plain)
    await expect(page2.get_by_role("link", name="Admin")).to_have_count(0)
    await page2.goto("/admin")
    await expect(page2.get_by_test_id("error-message")).to_have_text("The admin area is for platform admins.")
    await web.shot(page2, "admin-refused")


async def test_dialogs_are_keyboard_usable(web: Web, live: LiveCP) -> None:
    """Item 7: a dialog takes focus, Escape closes it and focus returns to the opener."""
    acct = await live.signup("Keyboard User")
    page = await web.signed_in_page(acct)
    await page.goto("/dashboard/keys")
    opener = page.get_by_role("button", name="Create key").first
    await opener.focus()
    await page.keyboard.press("Enter")
    dialog = page.locator("#key-create-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Name")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(opener).to_be_focused()

    # The team switcher popover works from the keyboard too.
    await page.focus("#team-button")
    await page.keyboard.press("Enter")
    await expect(page.locator("#team-menu")).to_be_visible()
    await expect(page.locator("#team-menu [role=menuitem]").first).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#team-menu")).to_be_hidden()
    await expect(page.locator("#team-button")).to_be_focused()


async def test_every_input_has_a_label(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Label Checker")
    page = await web.signed_in_page(acct)
    for path in ("/dashboard/sandboxes", "/dashboard/templates", "/dashboard/keys", "/dashboard/team"):
        await page.goto(path)
        unlabeled = await page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                .map(el => el.id || el.name)"""
        )
        assert unlabeled == [], f"{path}: inputs without labels: {unlabeled}"


OVERFLOW_JS = """(w) => [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > w + 0.5)
    .filter(e => !e.closest('.table-wrap, dialog:not([open]), [hidden]'))
    .filter(e => getComputedStyle(e).position !== 'fixed' && !e.closest('#sidebar'))
    .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + '.' + e.className)"""


async def test_phone_width_layout(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Phone User")
    page = await web.signed_in_page(acct, viewport=PHONE)
    sidebar = page.locator("#sidebar")
    toggle = page.get_by_role("button", name="Open navigation")
    await expect(toggle).to_be_visible()
    await expect(sidebar).not_to_be_in_viewport()
    # Nothing is wider than the screen.
    assert await page.evaluate(OVERFLOW_JS, PHONE["width"]) == []
    await web.shot(page, "phone-sandboxes")
    await toggle.click()
    await expect(sidebar).to_be_in_viewport()
    await page.wait_for_timeout(300)  # the slide-in transition
    await web.shot(page, "phone-nav-open", full_page=False)
    await page.keyboard.press("Escape")
    await expect(sidebar).not_to_be_in_viewport()
    await page.goto("/dashboard/team")
    # Nothing sticks out of the screen (wide tables scroll inside their own box).
    assert await page.evaluate(OVERFLOW_JS, PHONE["width"]) == []
    await web.shot(page, "phone-team")


async def test_the_api_docs_render_under_the_dashboards_policy(web: Web) -> None:
    """Swagger UI shares the dashboard's origin: it gets the same nonce policy, and runs."""
    page = await web.new_page()
    resp = await page.goto("/docs")
    assert resp is not None and "script-src 'nonce-" in resp.headers["content-security-policy"]
    await page.locator(".swagger-ui .info .title").filter(has_text="Warren").wait_for()
    await page.locator(".opblock-summary-path", has_text="/v1/sandboxes").first.wait_for()
