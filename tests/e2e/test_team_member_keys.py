"""The Team page's member removal and the API keys the member created (docs/auth.md "API keys
and departing members"): the dialog offers "Also revoke the N API keys they created"; checked,
the keys go with the member, unchecked they stay the team's."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from .conftest import Account, LiveCP, Web

pytestmark = pytest.mark.e2e


async def _make_keys(live: LiveCP, owner: Account, member: Account, *names: str) -> None:
    headers = {"Authorization": f"Bearer {live.token(member, owner.team_id)}"}
    for name in names:
        r = await live.http.post("/v1/api-keys", json={"name": name}, headers=headers)
        assert r.status_code == 201, r.text


async def _key_names(live: LiveCP, owner: Account) -> set[str]:
    r = await live.http.get("/v1/api-keys", headers={"Authorization": f"Bearer {live.token(owner)}"})
    assert r.status_code == 200, r.text
    return {k["name"] for k in r.json()}


async def _remove(web: Web, page: Page, member: Account, *, revoke: bool) -> None:
    row = page.locator("#members-table tbody tr").filter(has_text=member.email)
    await row.get_by_role("button", name="Remove").click()
    dialog = page.locator(f"#remove-member-{member.user_id}")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(f"{member.name} will lose access")
    box = dialog.get_by_label("Also revoke the 2 API keys they created")
    await expect(box).not_to_be_checked()
    if revoke:
        await box.check()
        await web.shot(page, "remove-member-keys-dialog")
    await dialog.get_by_role("button", name="Remove").click()
    await expect(page.locator(".toast")).to_contain_text(f"Removed {member.name}")
    await expect(page.locator("#members-table tbody tr").filter(has_text=member.email)).to_have_count(0)


async def test_removal_dialog_revokes_the_members_keys_only_when_checked(web: Web, live: LiveCP) -> None:
    owner = await live.signup("Keys Owner")
    leaver = await live.signup("Key Maker")
    keeper = await live.signup("Key Keeper")
    plain = await live.signup("No Keys")
    for m in (leaver, keeper, plain):
        await live.add_member(owner, owner.team_id, m)
    await _make_keys(live, owner, leaver, "maker-ci", "maker-deploy")
    await _make_keys(live, owner, keeper, "keeper-ci", "keeper-deploy")
    page = await web.signed_in_page(owner)
    await page.goto("/dashboard/team")

    await _remove(web, page, leaver, revoke=True)
    assert await _key_names(live, owner) == {"keeper-ci", "keeper-deploy"}
    await web.shot(page, "member-removed-with-keys")

    await _remove(web, page, keeper, revoke=False)
    assert await _key_names(live, owner) == {"keeper-ci", "keeper-deploy"}

    # A member with no keys gets the plain confirmation, as before.
    row = page.locator("#members-table tbody tr").filter(has_text=plain.email)
    await row.get_by_role("button", name="Remove").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_contain_text("No Keys will lose access")
    await confirm.get_by_role("button", name="Remove").click()
    await expect(page.locator("#members-table tbody tr").filter(has_text=plain.email)).to_have_count(0)
