"""Keys (SPEC §8.9), Hosts for BYOC teams (§8.7) and the admin area (§8.10) — issue 6 items 5
and 6."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from playwright.async_api import expect

from warren import ids

from .conftest import LiveCP, Web, sandbox_row

pytestmark = pytest.mark.e2e


async def test_api_key_create_reveal_copy_list_and_revoke(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Key Maker")
    page = await web.signed_in_page(acct)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    await page.get_by_role("link", name="API Keys").click()
    await expect(page.get_by_role("heading", name="No API keys")).to_be_visible()
    await web.shot(page, "keys-empty")
    await page.get_by_role("button", name="Create key").first.click()
    await page.locator("#key-create-dialog").get_by_label("Name").fill("CI pipeline")
    await page.locator("#key-create-dialog").get_by_role("button", name="Create key").click()

    reveal = page.locator("#key-reveal-dialog")
    await expect(reveal).to_be_visible()
    key = (await page.locator("#revealed-key").text_content() or "").strip()
    assert re.fullmatch(r"wrn_[0-9a-f]{32}", key), key
    await expect(reveal).to_contain_text("shown only once")
    await reveal.get_by_role("button", name="Copy").click()
    await expect(reveal.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == key
    await web.shot(page, "key-reveal")
    await reveal.get_by_role("button", name="Done").click()

    row = page.locator("tbody tr").filter(has_text="CI pipeline")
    await expect(row).to_contain_text(key[:10] + "…")
    await expect(row).to_contain_text(acct.email)  # created by
    await expect(row).to_contain_text("Never")  # last used
    assert key not in (await page.content())  # the plaintext is never shown again

    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/v1/sandboxes", headers={"X-API-Key": key})).status_code == 200
        await page.reload()
        await expect(row).to_contain_text(re.compile(r"just now|\ds ago"))
        await web.shot(page, "keys-list")

        await row.get_by_role("button", name="Revoke").click()
        confirm = page.locator("#confirm-dialog")
        await expect(confirm).to_contain_text("stops working immediately")
        await confirm.get_by_role("button", name="Revoke").click()
        await expect(page.locator("tbody tr").filter(has_text="CI pipeline")).to_have_count(0)
        await expect(page.locator(".toast")).to_contain_text("Key revoked")
        assert (await client.get("/v1/sandboxes", headers={"X-API-Key": key})).status_code == 401


async def test_byoc_hosts_register_reveal_status_and_force_delete(web: Web, live: LiveCP) -> None:
    owner = await live.signup("Byoc Owner")
    await live.enable_byoc(owner.team_id)
    page = await web.signed_in_page(owner)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    await page.get_by_role("link", name="Hosts").click()
    await page.wait_for_url("**/dashboard/hosts")
    await expect(page.get_by_role("heading", name="No hosts yet")).to_be_visible()

    # Register: a one-time token reveal with copy and its rules.
    await page.get_by_role("button", name="Register host").click()
    dialog = page.locator("#host-create-dialog")
    await dialog.get_by_label("Provider").fill("hetzner")
    await dialog.get_by_label("Availability zone").fill("fsn1")
    await web.shot(page, "register-host")
    await dialog.get_by_role("button", name="Create registration token").click()
    reveal = page.locator("#host-token-dialog")
    await expect(reveal).to_be_visible()
    token = (await page.locator("#revealed-token").text_content() or "").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token), token
    await expect(reveal).to_contain_text("expires in 1 hour and is single-use")
    await expect(reveal).to_contain_text("shown once")
    await reveal.get_by_role("button", name="Copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == token
    await web.shot(page, "host-token")
    await reveal.get_by_role("button", name="Done").click()

    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("Pending")
    await expect(rows.first).to_contain_text("hetzner · fsn1")
    await expect(rows.first).to_contain_text("Never")
    pending_id = await rows.first.get_attribute("data-row-id")
    assert pending_id

    # An online host with specs and a recent heartbeat (as its agent would report them).
    online = uuid.uuid4()
    await live.sql(
        """INSERT INTO hosts (id, type, team_id, status, address, cpu_cores, memory_mb, disk_gb, provider,
               last_heartbeat_at, created_by)
           VALUES (:id, 'byoc', :team, 'online', '', 8, 16384, 100, 'on-prem', now() - interval '20 seconds',
               :user)""",
        id=online,
        team=owner.team_uuid,
        user=owner.user_uuid,
    )
    sb1 = await sandbox_row(live, owner.team_id, ids.parse_id(ids.Kind.HOST, pending_id))
    sb2 = await sandbox_row(live, owner.team_id, ids.parse_id(ids.Kind.HOST, pending_id), status="pending")
    await page.reload()
    on_row = rows.filter(has_text=ids.host_id(online))
    await expect(on_row).to_contain_text("Online")
    await expect(on_row).to_contain_text("8 vCPU · 16GB RAM · 100GB disk")
    await expect(on_row).to_contain_text(re.compile(r"[2-5]\ds ago"))
    await expect(page.locator(".pill").first).to_contain_text("1 online")
    await web.shot(page, "hosts-list")

    # Delete runs the preview first and offers Force delete listing what will be destroyed.
    await rows.filter(has_text=pending_id).get_by_role("button", name="Delete").click()
    dialog = page.locator("#host-delete-dialog")
    await expect(dialog).to_contain_text("2 active sandboxes will be destroyed")
    await expect(dialog.locator("#host-delete-sandboxes li")).to_have_text([sb1, sb2])
    force = dialog.get_by_role("button", name="Force delete")
    await expect(force).to_be_enabled()
    await web.shot(page, "force-delete")
    await force.click()
    await expect(rows).to_have_count(1)
    await expect(page.locator(".toast")).to_contain_text("Host deleted")
    statuses = await live.sql(
        "SELECT status FROM sandboxes WHERE id IN (:a, :b)",
        a=ids.parse_id(ids.Kind.SANDBOX, sb1),
        b=ids.parse_id(ids.Kind.SANDBOX, sb2),
    )
    assert {r[0] for r in statuses} == {"stopped"}

    # Without active sandboxes the dialog offers a plain delete.
    await rows.first.get_by_role("button", name="Delete").click()
    await expect(dialog).to_contain_text("No active sandboxes on this host")
    await dialog.get_by_role("button", name="Delete host").click()
    await expect(page.get_by_role("heading", name="No hosts yet")).to_be_visible()


async def test_members_see_hosts_read_only(web: Web, live: LiveCP) -> None:
    owner = await live.signup("Hosts Owner")
    member = await live.signup("Hosts Member")
    await live.enable_byoc(owner.team_id)
    await live.add_member(owner, owner.team_id, member)
    page = await web.signed_in_page(member)
    await page.click("#team-button")
    await page.get_by_role("menuitem", name="Hosts Owner's Team").click()
    await expect(page.get_by_test_id("current-team")).to_have_text("Hosts Owner's Team")
    await page.goto("/dashboard/hosts")
    await expect(page.get_by_text("Ask a team owner or admin to register a host")).to_be_visible()
    await expect(page.get_by_role("button", name="Register host")).to_have_count(0)
    await web.shot(page, "member-hosts")

    # A team without BYOC has no Hosts page.
    plain = await live.signup("No Byoc")
    ppage = await web.signed_in_page(plain)
    await ppage.goto("/dashboard/hosts")
    await expect(ppage.get_by_test_id("error-message")).to_contain_text("BYOC")


async def test_admin_hosts_tabs_register_platform_host_and_enable_byoc(web: Web, live: LiveCP) -> None:
    admin = await live.signup("Root Admin")
    await live.make_admin(admin)
    customer = await live.signup("Customer Owner")
    page = await web.signed_in_page(admin)
    await page.goto("/admin")
    await expect(page.get_by_role("heading", name="No hosts yet")).to_be_visible()

    await page.get_by_role("button", name="Register platform host").click()
    await page.locator("#host-create-dialog").get_by_role("button", name="Create registration token").click()
    reveal = page.locator("#host-token-dialog")
    await expect(page.locator("#revealed-token")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    await expect(reveal).to_contain_text("expires in 1 hour and is single-use")
    await reveal.get_by_role("button", name="Done").click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await web.shot(page, "admin-platform-hosts")

    # Enable BYOC for a team by its ID; a bad ID shows the server's message.
    await page.get_by_role("button", name="Enable BYOC for a team").click()
    dialog = page.locator("#byoc-dialog")
    await dialog.get_by_label("Team ID").fill("team-" + "0" * 24 + "1")
    await dialog.get_by_role("button", name="Enable BYOC").click()
    await expect(dialog.locator(".form-error")).to_have_text("team not found")
    await dialog.get_by_label("Team ID").fill(customer.team_id)
    await dialog.get_by_role("button", name="Enable BYOC").click()
    await expect(page.locator(".toast")).to_contain_text("BYOC enabled")

    # The customer's owner now registers a host; it shows on the admin BYOC tab, by team.
    cpage = await web.signed_in_page(customer)
    await cpage.get_by_role("link", name="Hosts").click()
    await cpage.get_by_role("button", name="Register host").click()
    await cpage.locator("#host-create-dialog").get_by_role("button", name="Create registration token").click()
    await cpage.locator("#host-token-dialog").get_by_role("button", name="Done").click()
    await page.goto("/admin?tab=byoc")
    await expect(page.get_by_role("heading", name="Customer Owner's Team")).to_be_visible()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await web.shot(page, "admin-byoc-hosts")
