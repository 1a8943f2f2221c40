"""The Team page (issue 6 item 4; SPEC §8.6 — every SEED rule there, by name)."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from warren.cp.services import team_deletion

from .conftest import Account, LiveCP, Web

pytestmark = pytest.mark.e2e


async def _team_page(web: Web, account: Account) -> Page:
    return await web.signed_in_page(account, path="/dashboard/team")


async def _switch(page: Page, team_name: str) -> None:
    await page.click("#team-button")
    await page.locator("#team-menu").get_by_role("menuitem", name=team_name).click()
    await expect(page.get_by_test_id("current-team")).to_have_text(team_name)


async def test_members_table_has_separate_name_and_email_columns(web: Web, live: LiveCP) -> None:
    """SEED §8.6 "Members table with separate Name and Email columns" (name falls back to email)."""
    owner = await live.signup("Dorothy Vaughan")
    member = await live.signup("Annie Easley")
    nameless = await live.signup("Temp")
    await live.sql("UPDATE users SET name = '' WHERE email = :e", e=nameless.email)
    await live.add_member(owner, owner.team_id, member)
    await live.add_member(owner, owner.team_id, nameless)
    page = await _team_page(web, owner)
    table = page.locator("#members-table")
    await expect(table.locator("thead th")).to_have_text(["Name", "Email", "Role", "Joined", "Actions"])
    me = table.locator(f'tr[data-email="{owner.email}"]')
    await expect(me.locator(".member-name")).to_have_text("Dorothy Vaughan you")
    await expect(me.locator(".member-email")).to_have_text(owner.email)
    row = table.locator(f'tr[data-email="{member.email}"]')
    await expect(row.locator(".member-name")).to_have_text("Annie Easley")
    await expect(row.locator(".member-email")).to_have_text(member.email)
    fallback = table.locator(f'tr[data-email="{nameless.email}"]')
    await expect(fallback.locator(".member-name")).to_have_text(nameless.email)
    await expect(page.get_by_test_id("my-role")).to_have_text("Owner")
    await web.shot(page, "team-members")


async def test_inline_rename_enter_saves_escape_cancels(web: Web, live: LiveCP) -> None:
    owner = await live.signup("Rename Owner")
    member = await live.signup("Rename Member")
    await live.add_member(owner, owner.team_id, member)
    page = await _team_page(web, owner)
    name = page.locator("#team-name-edit")
    await name.click()
    field = page.get_by_label("Rename team")
    await expect(field).to_be_focused()
    await field.fill("Should Not Stick")
    await field.press("Escape")
    await expect(name).to_have_text("Rename Owner's Team")
    await expect(field).to_be_hidden()

    await name.click()
    await field.fill("Bad/Name")
    await field.press("Enter")
    await expect(page.locator("#team-rename-form .form-error")).to_contain_text("invalid team name")
    await field.fill("Apollo Guidance")
    await field.press("Enter")
    await expect(page.locator("#team-name-edit")).to_have_text("Apollo Guidance")
    await expect(page.get_by_test_id("current-team")).to_have_text("Apollo Guidance")
    await web.shot(page, "renamed")

    # A member cannot rename: the name is plain text.
    mpage = await web.signed_in_page(member)
    await _switch(mpage, "Apollo Guidance")
    await mpage.goto("/dashboard/team")
    await expect(mpage.locator("#team-name-edit")).to_have_count(0)
    await expect(mpage.get_by_test_id("team-name")).to_have_text("Apollo Guidance")
    # …and is offered no member actions and no add-member form.
    await expect(mpage.locator("#add-member-form")).to_have_count(0)
    await expect(mpage.get_by_role("button", name="Remove")).to_have_count(0)
    await web.shot(mpage, "member-view")


async def test_add_member_with_debounced_typeahead(web: Web, live: LiveCP) -> None:
    """SPEC §8.6/§7.10: suggestions appear from 3 characters on, debounced by 300 ms."""
    owner = await live.signup("Typeahead Owner")
    prefix = "zelda-" + owner.user_id[-6:]
    target = await live.signup("Zelda Zed", email=f"{prefix}@example.com")
    page = await _team_page(web, owner)
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if "/users/search" in r.url else None)
    box = page.get_by_role("combobox", name="Add member by email")
    await box.press_sequentially("ze", delay=20)
    await page.wait_for_timeout(500)
    assert searches == []  # fewer than 3 characters: no search
    await box.press_sequentially(prefix[2:] + "@ex", delay=40)
    suggestion = page.get_by_role("option", name=target.email)
    await expect(suggestion).to_be_visible()
    # Typed in quick succession: debounced into (at most) a couple of searches, not one per key.
    assert 1 <= len(searches) <= 3, searches
    await web.shot(page, "typeahead")
    await suggestion.click()
    await expect(box).to_have_value(target.email)
    await page.get_by_role("button", name="Add member").click()
    # An invitation, not a membership: listed as pending until Zelda accepts it herself.
    await expect(page.locator(".toast")).to_contain_text("Invitation sent")
    await expect(page.locator(f'#invitations-table tr[data-email="{target.email}"]')).to_be_visible()
    await expect(page.locator(f'#members-table tr[data-email="{target.email}"]')).to_have_count(0)
    zpage = await _team_page(web, target)
    invitation = zpage.locator("#my-invitations-table tbody tr").filter(has_text="Typeahead Owner's Team")
    await expect(invitation).to_contain_text(owner.email)
    await invitation.get_by_role("button", name="Accept").click()
    confirm = zpage.locator("#confirm-dialog")
    await expect(confirm).to_contain_text(f"{owner.email} invited you as member")
    await confirm.get_by_role("button", name="Join team").click()
    await expect(zpage.locator(".toast")).to_contain_text("You joined Typeahead Owner's Team")
    await expect(zpage.get_by_test_id("current-team")).to_contain_text("Typeahead Owner's Team")
    await expect(zpage.locator("#my-invitations")).to_have_count(0)
    await page.reload()
    await expect(page.locator(f'#members-table tr[data-email="{target.email}"]')).to_be_visible()
    await expect(page.locator("#invitations-table")).to_have_count(0)

    await box.fill("nobody-here@example.com")
    await page.get_by_role("button", name="Add member").click()
    await expect(page.locator("#add-member-form .form-error")).to_have_text(
        "user not found: no account with that email"
    )


async def test_pending_invitations_are_revoked_and_declined(web: Web, live: LiveCP) -> None:
    """The team page lists the team's pending invitations (revoke) and the user's own (decline)."""
    owner = await live.signup("Inviting Owner")
    guest = await live.signup("Guest Invitee")
    headers = {"Authorization": f"Bearer {live.token(owner)}"}

    async def invite() -> None:
        r = await live.http.post(
            f"/v1/teams/{owner.team_id}/members", json={"email": guest.email}, headers=headers
        )
        assert r.status_code == 201, r.text

    await invite()
    page = await _team_page(web, owner)
    await (
        page.locator(f'#invitations-table tr[data-email="{guest.email}"]')
        .get_by_role("button", name="Revoke")
        .click()
    )
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_contain_text(f"{guest.email} will no longer be able to join")
    await confirm.get_by_role("button", name="Revoke").click()
    await expect(page.locator(".toast")).to_contain_text("Invitation revoked")
    await expect(page.locator("#invitations-table")).to_have_count(0)
    gpage = await _team_page(web, guest)
    await expect(gpage.locator("#my-invitations")).to_have_count(0)

    await invite()
    await gpage.reload()
    row = gpage.locator("#my-invitations-table tbody tr").filter(has_text="Inviting Owner's Team")
    await row.get_by_role("button", name="Decline").click()
    await expect(gpage.locator(".toast")).to_contain_text("Invitation declined")
    await expect(gpage.locator("#my-invitations")).to_have_count(0)
    await expect(gpage.get_by_test_id("current-team")).to_have_text("Guest Invitee's Team")
    await page.reload()
    await expect(page.locator("#invitations-table")).to_have_count(0)
    await expect(page.locator(f'#members-table tr[data-email="{guest.email}"]')).to_have_count(0)


async def test_role_changes_and_removal_never_offered_on_self_or_owner(web: Web, live: LiveCP) -> None:
    """SPEC §7.1/§8.6 owner protection: no row actions on yourself or on the owner."""
    owner = await live.signup("Protected Owner")
    admin = await live.signup("Future Admin")
    other = await live.signup("Other Member")
    await live.add_member(owner, owner.team_id, admin)
    await live.add_member(owner, owner.team_id, other)
    page = await _team_page(web, owner)
    rows = page.locator("#members-table tbody tr")
    own_row = rows.filter(has_text=owner.email)
    await expect(own_row.get_by_role("button")).to_have_count(0)
    admin_row = rows.filter(has_text=admin.email)
    await admin_row.get_by_role("button", name="Make admin").click()
    await expect(page.locator(".toast")).to_contain_text("Future Admin is now an admin")
    await expect(rows.filter(has_text=admin.email)).to_contain_text("Admin")

    apage = await web.signed_in_page(admin)
    await _switch(apage, "Protected Owner's Team")
    await apage.goto("/dashboard/team")
    arows = apage.locator("#members-table tbody tr")
    await expect(arows.filter(has_text=owner.email).get_by_role("button")).to_have_count(0)
    await expect(arows.filter(has_text=admin.email).get_by_role("button")).to_have_count(0)
    other_row = arows.filter(has_text=other.email)
    await expect(other_row.get_by_role("button", name="Make admin")).to_be_visible()
    await web.shot(apage, "admin-view")
    await other_row.get_by_role("button", name="Remove").click()
    confirm = apage.locator("#confirm-dialog")
    await expect(confirm).to_be_visible()
    await expect(confirm).to_contain_text("Other Member will lose access")
    await web.shot(apage, "remove-confirm")
    await confirm.get_by_role("button", name="Remove").click()
    await expect(arows.filter(has_text=other.email)).to_have_count(0)
    await expect(apage.locator(".toast")).to_contain_text("Removed Other Member")

    # The removed member loses access at once (the session is re-checked in the DB).
    opage = await web.signed_in_page(other)
    await expect(opage.get_by_test_id("current-team")).to_have_text("Other Member's Team")


async def test_delete_and_leave_disabled_for_the_only_team(web: Web, live: LiveCP) -> None:
    """SEED §8.6 "Disable delete/leave button when user has only one team, with explanatory
    hint to create another team first" (the team list is loaded alongside the team)."""
    owner = await live.signup("Solo Owner")
    page = await _team_page(web, owner)
    delete = page.get_by_role("button", name="Delete team")
    await expect(delete).to_be_disabled()
    await expect(page.get_by_test_id("last-team-hint")).to_have_text(
        "Create another team first — you can't delete your only team."
    )
    await web.shot(page, "only-team-delete-disabled")

    # A member whose only team is the one they joined cannot leave it either.
    joiner = await live.signup("Only Joiner")
    await live.add_member(owner, owner.team_id, joiner)
    await team_deletion.delete_team(live.engine, live.pool, live.ctx(joiner), joiner.team_uuid)
    jpage = await _team_page(web, joiner)
    await expect(jpage.get_by_role("button", name="Leave team")).to_be_disabled()
    await expect(jpage.get_by_test_id("last-team-hint")).to_have_text(
        "Create another team first — you can't leave your only team."
    )

    # With a second team the button is enabled.
    await page.click("#team-button")
    await page.get_by_role("menuitem", name="Create team").click()
    await page.locator("#create-team-dialog").get_by_label("Team name").fill("Second Team")
    await page.locator("#create-team-dialog").get_by_role("button", name="Create team").click()
    await expect(page.get_by_test_id("current-team")).to_have_text("Second Team")
    await expect(page.get_by_role("button", name="Delete team")).to_be_enabled()
    await expect(page.get_by_test_id("last-team-hint")).to_have_count(0)


async def test_delete_switches_to_the_next_team_without_logging_out(web: Web, live: LiveCP) -> None:
    """SEED §8.6 "After delete/leave, switch to next available team instead of logging out"."""
    owner = await live.signup("Deleting Owner")
    await live.create_team(owner, "Doomed Team")
    page = await web.signed_in_page(owner)
    await _switch(page, "Doomed Team")
    await page.goto("/dashboard/team")
    await page.get_by_role("button", name="Delete team").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_contain_text("Delete Doomed Team?")
    await confirm.get_by_role("button", name="Delete team").click()
    await page.wait_for_url("**/dashboard/team")
    await expect(page.locator(".toast")).to_contain_text("Team deleted. Switched to Deleting Owner's Team.")
    await expect(page.get_by_test_id("current-team")).to_have_text("Deleting Owner's Team")
    await expect(page.get_by_test_id("user-name")).to_have_text("Deleting Owner")
    await page.click("#team-button")
    await expect(page.locator("#team-menu")).not_to_contain_text("Doomed Team")
    await web.shot(page, "after-delete")


async def test_leaving_the_last_team_shows_no_teams_remaining_and_the_empty_state(
    web: Web, live: LiveCP
) -> None:
    """SEED §8.6: with no team left, the toast "No teams remaining. Use the sidebar to create a
    new team." appears, the user stays signed in, and the page shows the "No team yet" empty state
    (SEED "Show empty state on /dashboard/team when auth has no team context")."""
    owner = await live.signup("Host Owner")
    leaver = await live.signup("Last Leaver")
    await live.add_member(owner, owner.team_id, leaver)
    page = await web.signed_in_page(leaver)
    await _switch(page, "Host Owner's Team")
    await page.goto("/dashboard/team")
    await expect(page.get_by_role("button", name="Leave team")).to_be_enabled()
    # Meanwhile the leaver's other team goes away (e.g. deleted in another tab).
    await team_deletion.delete_team(live.engine, live.pool, live.ctx(leaver), leaver.team_uuid)
    await page.get_by_role("button", name="Leave team").click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Leave team").click()
    await expect(page.locator(".toast")).to_have_text(
        "No teams remaining. Use the sidebar to create a new team."
    )
    await expect(page.get_by_test_id("team-empty")).to_contain_text("No team yet")
    await expect(page.get_by_test_id("current-team")).to_have_text("No active team")
    await expect(page.get_by_test_id("user-name")).to_have_text("Last Leaver")  # still signed in
    await web.shot(page, "no-team-empty-state")

    # From here the sidebar creates a new team and the user carries on.
    await page.get_by_role("button", name="Create team").first.click()
    await page.locator("#create-team-dialog").get_by_label("Team name").fill("Fresh Start")
    await page.locator("#create-team-dialog").get_by_role("button", name="Create team").click()
    await expect(page.get_by_test_id("current-team")).to_have_text("Fresh Start")


async def test_switch_team_shows_the_name_from_the_database(web: Web, live: LiveCP) -> None:
    """SEED "SwitchTeam re-fetches name from DB instead of trusting stale JWT claim"."""
    acct = await live.signup("Old Name")
    await live.create_team(acct, "Other Team")
    page = await web.signed_in_page(acct)
    await expect(page.get_by_test_id("user-name")).to_have_text("Old Name")
    await live.sql("UPDATE users SET name = 'New Name' WHERE email = :e", e=acct.email)
    await _switch(page, "Other Team")
    await expect(page.get_by_test_id("user-name")).to_have_text("New Name")


async def test_create_team_past_the_cap_shows_the_quota_error_in_the_dialog(web: Web, live: LiveCP) -> None:
    """The teams one user may own (WARREN_MAX_TEAMS_PER_USER, 10 here): the dashboard's create
    form shows the API's 429 message in the dialog and the user stays where they were."""
    owner = await live.signup("Collector")
    for i in range(live.settings.max_teams_per_user - 1):
        await live.create_team(owner, f"Team {i}")
    page = await web.signed_in_page(owner)
    await page.click("#team-button")
    await page.get_by_role("menuitem", name="Create team").click()
    dialog = page.locator("#create-team-dialog")
    await dialog.get_by_label("Team name").fill("One Too Many")
    await dialog.get_by_role("button", name="Create team").click()
    await expect(dialog.locator(".form-error")).to_have_text(
        f"you own {live.settings.max_teams_per_user} teams, at most "
        f"{live.settings.max_teams_per_user} per user; delete one to create another"
    )
    await expect(page.get_by_test_id("current-team")).to_have_text("Collector's Team")
    await web.shot(page, "create-team-cap")
