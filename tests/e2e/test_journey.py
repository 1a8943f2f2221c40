"""The full journey on a live platform (issue 6 "Done when"), with a real ``warren agent`` running
real sandboxes: sign up → create team → invite a second user → launch a sandbox (live CPU and
memory charts, pause/resume) → snapshot it → launch from the snapshot → destroy → delete the
team → land on the other team.

Needs root (the agent uses namespaces, cgroups and overlayfs); CI runs as root.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, Route, expect

from tests.harness.agent import AgentProcess
from warren import ids

from .conftest import PASSWORD, LiveCP, Web, online_agent, unique_email

pytestmark = [pytest.mark.e2e, pytest.mark.root]

AGENT_IP = "127.0.0.41"


@pytest.fixture(scope="module")
async def agent(live: LiveCP) -> AsyncIterator[AgentProcess]:
    """A real agent registered as a platform host with a one-time token, online before the
    test starts."""
    if os.geteuid() != 0:
        pytest.skip("a real agent needs root (namespaces, cgroups, overlayfs)")
    async with online_agent(live, AGENT_IP, "e2e") as proc:
        yield proc


async def _wait_for_points(page: Page, sid: str, range_: str, tries: int = 90) -> None:
    """Open the detail page until its charts have data (the agent samples every 500 ms)."""
    for _ in range(tries):
        await page.goto(f"/dashboard/sandboxes/{sid}?range={range_}")
        metrics = page.locator("#metrics")
        await expect(metrics).to_have_attribute("data-loaded", re.compile(r"^\d+$"))
        if int(await metrics.get_attribute("data-loaded") or 0) > 0:
            return
        await page.wait_for_timeout(1000)
    raise AssertionError("no metric points arrived")


async def _a_failed_metrics_read_clears_once_one_succeeds(signed_in: Page, sid: str) -> None:
    """The charts' refresh (every 10 s, run here on a page's fake clock): a read refused shows
    the server's reason, and the next read that succeeds takes it away again."""
    page = await signed_in.context.new_page()
    refused: list[str] = []

    async def refuse_once(route: Route) -> None:
        if refused:
            await route.continue_()
            return
        refused.append(route.request.url)
        body = '{"error": {"code": "host_unreachable", "message": "The sandbox\'s host is unreachable"}}'
        await route.fulfill(status=503, content_type="application/json", body=body)

    await page.clock.install()
    await page.route(f"**/dashboard/sandboxes/{sid}/metrics?*", refuse_once)
    await page.goto(f"/dashboard/sandboxes/{sid}?range=5m")
    error = page.locator("#metrics-error")
    await expect(error).to_have_text("The sandbox's host is unreachable")
    await page.clock.run_for(11_000)
    await expect(page.locator("#metrics")).to_have_attribute("data-loaded", re.compile(r"^[1-9]\d*$"))
    await expect(error).to_be_hidden()
    assert len(refused) == 1
    await page.close()


async def test_full_journey(web: Web, live: LiveCP, agent: object) -> None:
    page = await web.new_page()
    nav = page.get_by_role("navigation", name="Main")

    # 1. Sign up (with a Full name).
    await page.goto("/login?mode=signup")
    await page.get_by_label("Full name").fill("Journey Owner")
    await page.get_by_label("Email").fill(unique_email("journey"))
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.click("#login-submit")
    await page.wait_for_url("**/dashboard/sandboxes")
    await expect(page.get_by_test_id("user-name")).to_have_text("Journey Owner")
    await web.shot(page, "signed-up")

    # 2. Create a team from the sidebar; it becomes the current team.
    await page.click("#team-button")
    await page.get_by_role("menuitem", name="Create team").click()
    await page.locator("#create-team-dialog").get_by_label("Team name").fill("Journey Lab")
    await page.locator("#create-team-dialog").get_by_role("button", name="Create team").click()
    await expect(page.get_by_test_id("current-team")).to_have_text("Journey Lab")

    # 3. Invite a second user through the typeahead.
    guest = await live.signup("Guest Member")
    await nav.get_by_role("link", name="Team").click()
    box = page.get_by_role("combobox", name="Add member by email")
    await box.press_sequentially(guest.email.split("@")[0] + "@", delay=30)
    await page.get_by_role("option", name=guest.email).click()
    await page.get_by_role("button", name="Add member").click()
    # An invitation: the guest joins once they accept it in their own dashboard.
    await expect(page.locator(f'#invitations-table tr[data-email="{guest.email}"]')).to_be_visible()
    gpage = await web.signed_in_page(guest)
    await gpage.goto("/dashboard/team")
    invitation = gpage.locator("#my-invitations-table tbody tr").filter(has_text="Journey Lab")
    await invitation.get_by_role("button", name="Accept").click()
    await gpage.locator("#confirm-dialog").get_by_role("button", name="Join team").click()
    await expect(gpage.get_by_test_id("current-team")).to_contain_text("Journey Lab")
    await page.reload()
    row = page.locator(f'#members-table tr[data-email="{guest.email}"]')
    await expect(row.locator(".member-name")).to_have_text("Guest Member")
    await web.shot(page, "team-with-guest")

    # 4. Launch a sandbox.
    await nav.get_by_role("link", name="Sandboxes").click()
    await page.get_by_role("button", name="Launch sandbox").first.click()
    dialog = page.locator("#launch-dialog")
    await dialog.get_by_label("vCPUs").fill("1")
    await dialog.get_by_label("Memory (MB)").fill("256")
    await dialog.get_by_label("Idle timeout (s)").fill("0")
    await dialog.get_by_role("button", name="Launch").click()
    await page.wait_for_load_state()
    rows = page.locator("#sandbox-rows tr")
    await expect(rows).to_have_count(1, timeout=60_000)
    first = await rows.first.get_attribute("data-row-id")
    assert first and first.startswith("sb-")
    await expect(rows.first.locator(".badge")).to_have_text("Running")
    await expect(rows.first).to_have_class(re.compile("flash"))
    await expect(page.locator(".toast")).to_contain_text(f"Sandbox {first} launched")
    await web.shot(page, "launched")

    # Live CPU and memory charts on the detail page, drawn as inline SVG; ranges in ?range=.
    await _wait_for_points(page, first, "5m")
    await expect(page.locator("#cpu-chart path.line")).to_have_count(1)
    await expect(page.locator("#mem-chart path.line")).to_have_count(1)
    await expect(page.locator("#mem-now")).to_have_text(re.compile(r"^\d+ MB of 256 MB$"))
    await expect(page.get_by_role("link", name="5m")).to_have_attribute("aria-current", "true")
    await web.shot(page, "detail-charts")
    await page.get_by_role("link", name="1h").click()
    await page.wait_for_url(re.compile(r"range=1h"))
    await expect(page.locator("#metrics")).to_have_attribute("data-range", "1h")
    await expect(page.locator("#metrics")).to_have_attribute("data-loaded", re.compile(r"^[1-9]\d*$"))
    await _a_failed_metrics_read_clears_once_one_succeeds(page, first)

    # Pause and resume from the detail page.
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator(".sub .badge")).to_have_text("Paused", timeout=30_000)
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator(".sub .badge")).to_have_text("Running", timeout=30_000)

    # 5. Snapshot it from the list (the sandbox stays paused afterwards).
    await nav.get_by_role("link", name="Sandboxes").click()
    await rows.first.get_by_role("button", name=f"Snapshot {first}").click()
    snap = page.locator("#snapshot-dialog")
    await expect(snap).to_contain_text(first)
    await snap.get_by_label("Name").fill("journey-snap")
    await web.shot(page, "snapshot-dialog")
    await snap.get_by_role("button", name="Take snapshot").click()
    await expect(page.locator(".toast")).to_contain_text("Snapshot created", timeout=120_000)
    await expect(rows.filter(has_text=first).locator(".badge")).to_have_text("Paused")

    # 6. Launch from the snapshot (Templates page, pre-filled launch dialog).
    await nav.get_by_role("link", name="Templates").click()
    trow = page.locator("tbody tr").filter(has_text="journey-snap")
    await expect(trow).to_contain_text("Snapshot")
    await web.shot(page, "templates")
    await trow.get_by_role("button", name="Launch from journey-snap").click()
    await expect(page.locator("#launch-dialog").get_by_label("Memory (MB)")).to_have_value("256")
    await page.locator("#launch-dialog").get_by_role("button", name="Launch").click()
    await page.wait_for_url("**/dashboard/sandboxes", timeout=120_000)
    await expect(rows).to_have_count(2, timeout=60_000)
    second_row = rows.filter(has_text="journey-snap")
    await expect(second_row.locator(".badge")).to_have_text("Running")
    second = await second_row.get_attribute("data-row-id")
    assert second and second != first
    await web.shot(page, "two-sandboxes")

    # 7. Destroy both (with a confirmation).
    for sid in (second, first):
        await rows.filter(has_text=sid).get_by_role("button", name=f"Destroy {sid}").click()
        confirm = page.locator("#confirm-dialog")
        await expect(confirm).to_contain_text(sid)
        await confirm.get_by_role("button", name="Destroy").click()
        try:
            await expect(confirm).to_be_hidden(timeout=90_000)
        except AssertionError:  # the dialog stays open and shows the error when destroy fails
            raise AssertionError(
                f"destroy {sid} failed: {await confirm.locator('.form-error').text_content()!r}\n"
                f"agent log:\n{agent.log_tail(60)}"  # type: ignore[attr-defined]
            ) from None
        try:
            await expect(rows.filter(has_text=sid)).to_have_count(0, timeout=60_000)
        except AssertionError:
            sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sid)
            db = await live.sql("SELECT status FROM sandboxes WHERE id = :id", id=sb_uuid)
            raise AssertionError(
                f"row {sid} still listed; DB status {db!r}\nagent log:\n{agent.log_tail(60)}"  # type: ignore[attr-defined]
            ) from None
    await expect(page.get_by_role("heading", name="No sandboxes yet")).to_be_visible()

    # 8. Delete the team and land on the other team, still signed in.
    await nav.get_by_role("link", name="Team").click()
    await page.get_by_role("button", name="Delete team").click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Delete team").click()
    await expect(page.locator(".toast")).to_contain_text("Team deleted. Switched to Journey Owner's Team.")
    await expect(page.get_by_test_id("current-team")).to_have_text("Journey Owner's Team")
    await expect(page.get_by_test_id("user-name")).to_have_text("Journey Owner")
    await web.shot(page, "landed-on-other-team")

    # The guest no longer sees the deleted team.
    gpage = await web.signed_in_page(guest)
    await gpage.click("#team-button")
    await expect(gpage.locator("#team-menu")).not_to_contain_text("Journey Lab")
