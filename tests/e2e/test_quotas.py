"""Quotas in the dashboard: a team sees its usage against its quotas on the Team page, and a
platform admin raises a team's quota from the admin page."""

from __future__ import annotations

import uuid

from playwright.async_api import expect

from .conftest import LiveCP, Web, sandbox_row


async def test_team_sees_usage_against_quotas_and_an_admin_raises_one(web: Web, live: LiveCP) -> None:
    owner = await live.signup("Quota Owner")
    await sandbox_row(live, owner.team_id, uuid.uuid4(), vcpus=2, memory_mb=1024)
    await sandbox_row(live, owner.team_id, uuid.uuid4(), status="stopped")  # not counted

    page = await web.signed_in_page(owner)
    await page.goto("/dashboard/team")
    card = page.locator("#quotas-card")
    await expect(card.get_by_test_id("used-sandboxes")).to_have_text("1")
    await expect(card.get_by_test_id("quota-sandboxes")).to_have_text("20")
    await expect(card.get_by_test_id("used-vcpus")).to_have_text("2")
    await expect(card.get_by_test_id("used-memory_mb")).to_have_text("1024 MB")
    await expect(card.get_by_test_id("quota-memory_mb")).to_have_text("40960 MB")
    await web.shot(page, "team-quotas")

    admin = await live.signup("Platform Admin")
    await live.make_admin(admin)
    apage = await web.signed_in_page(admin)
    await apage.goto("/admin")
    await expect(apage.get_by_test_id("default-quotas")).to_contain_text("20 sandboxes")
    await apage.get_by_role("button", name="Set team quotas").click()
    dialog = apage.locator("#quotas-dialog")
    await dialog.locator("#quotas-team").fill(owner.team_id)
    await dialog.locator("#quotas-sandboxes").fill("50")
    await dialog.get_by_role("button", name="Save quotas").click()
    await expect(apage.get_by_text("Team quotas saved")).to_be_visible()
    row = await live.sql("SELECT quota_sandboxes, quota_vcpus FROM teams WHERE id = :t", t=owner.team_uuid)
    assert row == [(50, None)]  # an empty field leaves that quota as it was

    await page.reload()
    await expect(card.get_by_test_id("quota-sandboxes")).to_have_text("50")
    await expect(card.get_by_test_id("quota-vcpus")).to_have_text("40")

    # The team's owner is no platform admin: the admin page and its action refuse them.
    await page.goto("/admin")
    await expect(page.get_by_text("The admin area is for platform admins.")).to_be_visible()
    status = await page.evaluate(
        """async (team) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/dashboard/actions/admin/quotas', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: JSON.stringify({team_id: team, sandboxes: 1000})});
            return r.status;
        }""",
        owner.team_id,
    )
    assert status == 403
    assert (await live.sql("SELECT quota_sandboxes FROM teams WHERE id = :t", t=owner.team_uuid)) == [(50,)]
