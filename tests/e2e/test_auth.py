"""Dashboard sign-in (issue 6 item 1; SPEC §8.1, §8.3): login / signup with Full name, GitHub
sign-in, logout, the session cookie, and the SEED rule that every login starts from a clean team
list."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import expect

from warren.cp.services import auth as auth_svc
from warren.cp.services import oauth as oauth_svc
from warren.cp.services import team_deletion

from .conftest import JWT_SECRET, PASSWORD, LiveCP, Web, unique_email

pytestmark = pytest.mark.e2e


async def _get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, headers=headers)


async def test_signup_with_full_name_shows_the_name_in_the_footer(web: Web) -> None:
    """SEED §8.2/§8.3: signup asks for a Full name; the sidebar footer shows it (name, not email)."""
    page = await web.new_page()
    await page.goto("/")
    await page.wait_for_url("**/login")
    await expect(page.locator("#name-field")).to_be_hidden()  # "Full name" only appears for signup
    await web.shot(page, "login")
    await page.click("#mode-toggle")
    await expect(page.locator("#auth-title")).to_have_text("Create account")
    await expect(page.get_by_label("Full name")).to_be_visible()
    email = unique_email("ada")
    await page.get_by_label("Full name").fill("Ada Lovelace")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await web.shot(page, "signup")
    await page.click("#login-submit")
    await page.wait_for_url("**/dashboard/sandboxes")
    await expect(page.get_by_test_id("user-name")).to_have_text("Ada Lovelace")
    await expect(page.get_by_test_id("current-team")).to_have_text("Ada Lovelace's Team")
    await web.shot(page, "after-signup")


async def test_signup_errors_show_inline(web: Web, live: LiveCP) -> None:
    taken = await live.signup("Taken")
    page = await web.new_page()
    await page.goto("/login?mode=signup")
    await page.get_by_label("Full name").fill("Someone")
    await page.get_by_label("Email").fill(taken.email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text("an account with this email already exists")
    # The form keeps what was typed (except the password) and stays in signup mode.
    await expect(page.get_by_label("Full name")).to_have_value("Someone")
    await expect(page.get_by_label("Email")).to_have_value(taken.email)
    await web.shot(page, "signup-error")


async def test_login_error_password_toggle_and_logout(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Grace Hopper")
    page = await web.new_page()
    await page.goto("/login")
    await page.get_by_label("Email").fill(acct.email)
    await page.get_by_label("Password", exact=True).fill("wrong-password")
    await page.click("#password-toggle")
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute("type", "text")
    await page.click("#password-toggle")
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute("type", "password")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text("invalid email or password")
    await web.shot(page, "login-error")

    await page.get_by_label("Password", exact=True).fill(acct.password)
    await page.click("#login-submit")
    await page.wait_for_url("**/dashboard/sandboxes")
    await expect(page.get_by_test_id("user-name")).to_have_text("Grace Hopper")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/login")
    # The session is gone: dashboard pages send the browser back to the login page.
    await page.goto("/dashboard/team")
    await page.wait_for_url("**/login")


async def test_session_cookie_is_httponly_lax_and_secure_behind_tls(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Cookie Monster")
    page = await web.new_page()
    await web.login(page, acct)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "warren_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["secure"] is False  # plain http on loopback
    # Page scripts cannot read it.
    assert "warren_session" not in await page.evaluate("document.cookie")

    # Behind a TLS-terminating proxy (X-Forwarded-Proto: https) the cookie is Secure.
    r = await _get(live.url + "/login", headers={"X-Forwarded-Proto": "https"})
    set_cookie = r.headers["set-cookie"].lower()
    assert "secure" in set_cookie and "httponly" in set_cookie and "samesite=lax" in set_cookie
    r = await _get(live.url + "/login")
    assert "secure" not in r.headers["set-cookie"].lower()


async def test_every_login_starts_from_a_clean_team_list(web: Web, live: LiveCP) -> None:
    """SEED §8.1 "Reset teams store on login": after A signs out and B signs in in the same
    browser, nothing of A's session (team list, current team, CSRF token) remains."""
    a = await live.signup("Alice Able")
    await live.create_team(a, "Alice Side Project")
    b = await live.signup("Bob Baker")
    page = await web.new_page()
    await web.login(page, a)
    await page.click("#team-button")
    await expect(page.locator("#team-menu [data-switch-team]")).to_have_count(2)
    await expect(page.locator("#team-menu")).to_contain_text("Alice Side Project")
    await web.shot(page, "alice-teams")
    csrf_a = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    await page.keyboard.press("Escape")
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/login")

    await web.login(page, b)
    await page.click("#team-button")
    items = page.locator("#team-menu [data-switch-team]")
    await expect(items).to_have_count(1)
    await expect(items).to_have_text(["B" + "Bob Baker's Team" + " Owner"])  # initial, name, role
    await expect(page.locator("#team-menu")).not_to_contain_text("Alice")
    await expect(page.get_by_test_id("current-team")).to_have_text("Bob Baker's Team")
    assert await page.locator('meta[name="csrf-token"]').get_attribute("content") != csrf_a
    await web.shot(page, "bob-teams")


async def test_invited_user_without_a_default_team_lands_on_the_team_they_joined(
    web: Web, live: LiveCP
) -> None:
    """SEED loginTeam fix: a user with no live default membership logs in to their earliest
    active team instead of being refused."""
    owner = await live.signup("Olga Owner")
    invited = await live.signup("Ivan Invited")
    await live.add_member(owner, owner.team_id, invited)
    # Ivan's own (default) team goes away; only the team he was invited to remains.
    await team_deletion.delete_team(live.engine, live.pool, live.ctx(invited), invited.team_uuid)
    page = await web.new_page()
    await web.login(page, invited)
    await expect(page.get_by_test_id("current-team")).to_have_text("Olga Owner's Team")
    await expect(page.get_by_test_id("user-name")).to_have_text("Ivan Invited")


async def test_github_button_and_oauth_landing_page(web: Web, live: LiveCP) -> None:
    """SPEC §8.3: the GitHub button starts the CP's OAuth flow; the landing page turns the
    short-lived warren_oauth_* cookies into a session (and clears them), or shows the error."""
    acct = await live.signup("Octo Cat")
    page = await web.new_page()
    await page.goto("/login")
    await expect(page.locator("#github-button")).to_have_attribute("href", "/v1/auth/oauth/github")

    # An error from the callback is shown on the login page.
    await page.goto("/auth/github/callback?error=access_denied")
    await page.wait_for_url("**/login?error=access_denied")
    await expect(page.locator("#login-error")).to_have_text("GitHub sign-in was cancelled.")
    await web.shot(page, "oauth-error")

    # No cookies → missing_token.
    await page.goto("/auth/github/callback")
    await page.wait_for_url("**/login?error=missing_token")

    # A forged token is refused.
    await page.context.add_cookies(
        [{"name": "warren_oauth_token", "value": "not-a-jwt", "url": live.url + "/auth/"}]
    )
    await page.goto("/auth/github/callback")
    await page.wait_for_url("**/login?error=missing_token")

    # The cookies the OAuth callback sets (Path=/auth/, values percent-encoded) sign the user in.
    result = await auth_svc.login(live.engine, JWT_SECRET, email=acct.email, password=acct.password)
    values = {"token": result.token, "user_id": result.user_id, "team_id": result.team_id,
              "email": result.email, "name": result.name}  # fmt: skip
    await page.context.add_cookies(
        [
            {"name": f"warren_oauth_{k}", "value": quote(v, safe=""), "url": live.url + "/auth/"}
            for k, v in values.items()
        ]
    )
    # Not without the binding cookie the callback sets beside them (session 14: a sibling host
    # could plant the others).
    await page.goto("/auth/github/callback")
    await page.wait_for_url("**/login?error=missing_token")
    bind = oauth_svc.landing_cookie_value(JWT_SECRET, result.token)
    await page.context.add_cookies(
        [
            {"name": f"warren_oauth_{k}", "value": quote(v, safe=""), "url": live.url + "/auth/"}
            for k, v in values.items()
        ]
        + [{"name": oauth_svc.bind_cookie_name(False), "value": bind, "url": live.url + "/"}]
    )
    await page.goto("/auth/github/callback")
    await page.wait_for_url("**/dashboard/sandboxes")
    await expect(page.get_by_test_id("user-name")).to_have_text("Octo Cat")
    names = {c["name"] for c in await page.context.cookies()}
    assert not any(n.startswith("warren_oauth_") for n in names)
    assert "warren_session" in names
