"""Sandboxes list and detail (SPEC §8.4/§8.5) and the Templates page (§8.8) — the parts that need
no host agent: rows are written straight into the database. Launching, pausing, snapshotting and
live metrics on a real agent are in ``test_journey.py``."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Route, expect

from warren.cp.services import team_deletion

from .conftest import LiveCP, Web, sandbox_row

pytestmark = pytest.mark.e2e


async def test_launch_disabled_with_an_explanation_without_an_active_team(web: Web, live: LiveCP) -> None:
    """SEED §8.4 "Block sandbox creation in UI … when user has no active team context"."""
    acct = await live.signup("Teamless Tina")
    page = await web.signed_in_page(acct)
    await team_deletion.delete_team(live.engine, live.pool, live.ctx(acct), acct.team_uuid)
    await page.reload()
    launch = page.get_by_role("button", name="Launch sandbox")
    await expect(launch).to_be_disabled()
    await expect(launch).to_have_attribute("title", re.compile("^No active team"))
    hint = page.locator("#no-team-hint")
    await expect(hint).to_have_text(
        "No active team — select or create a team in the sidebar to create sandboxes."
    )
    assert await launch.get_attribute("aria-describedby") == "no-team-hint"
    await web.shot(page, "no-team-launch-disabled")
    # The server refuses too (same service rule as the API: 403 no_team).
    status = await page.evaluate(
        """async () => (await fetch('/dashboard/actions/sandboxes', {method: 'POST',
            headers: {'Content-Type': 'application/json',
                      'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
            body: '{}'})).json()"""
    )
    assert status["error"]["code"] == "no_team"


async def test_list_search_refresh_and_auto_refresh(web: Web, live: LiveCP) -> None:
    acct = await live.signup("List Lena")
    host = uuid.uuid4()
    first = await sandbox_row(live, acct.team_id, host, vcpus=2, memory_mb=1024, timeout_sec=300)
    paused = await sandbox_row(live, acct.team_id, host, status="paused")
    await sandbox_row(live, acct.team_id, host, status="stopped")  # hidden from the list
    page = await web.new_page()
    await page.clock.install()
    await web.login(page, acct)
    # From here on the page's timers only move when the test moves them.
    await page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))
    rows = page.locator("#sandbox-rows tr")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#running-count")).to_have_text("1 running · 2 total")
    row = rows.filter(has_text=first)
    await expect(row).to_contain_text("1 GB")
    await expect(row).to_contain_text("5m")  # idle timeout
    await expect(row.get_by_role("button", name=f"Pause {first}")).to_be_visible()
    prow = rows.filter(has_text=paused)
    await expect(prow.get_by_role("button", name=f"Resume {paused}")).to_be_visible()
    await expect(prow.locator(".badge")).to_have_text("Paused")
    await web.shot(page, "sandbox-list")

    # Search by ID: substring, highlighted.
    needle = paused[-6:]
    await page.get_by_label("Search by sandbox ID").fill(needle.upper())
    await expect(rows.filter(has_text=first)).to_be_hidden()
    await expect(prow.locator("mark")).to_have_text(needle)
    await page.get_by_label("Search by sandbox ID").fill("no-such-id")
    await expect(page.locator("#search-empty")).to_be_visible()
    await page.get_by_label("Search by sandbox ID").fill("")

    # Refresh picks up a new sandbox.
    second = await sandbox_row(live, acct.team_id, host)
    await page.get_by_role("button", name="Refresh").click()
    await expect(rows.filter(has_text=second)).to_be_visible()
    await expect(page.locator("#running-count")).to_have_text("2 running · 3 total")

    # 30 s auto-refresh with a countdown, and a toggle.
    countdown = page.locator("#refresh-countdown")
    await expect(countdown).to_have_text("in 30s")
    await page.clock.run_for(10_000)
    await expect(countdown).to_have_text("in 20s")
    third = await sandbox_row(live, acct.team_id, host)
    await page.clock.run_for(20_000)
    await expect(rows.filter(has_text=third)).to_be_visible()
    await expect(countdown).to_have_text("in 30s")
    await page.get_by_label("Auto-refresh").uncheck()
    await expect(countdown).to_have_text("off")
    fourth = await sandbox_row(live, acct.team_id, host)
    await page.clock.run_for(60_000)
    await expect(rows.filter(has_text=fourth)).to_have_count(0)


async def test_an_older_refresh_answer_never_overwrites_a_newer_one(web: Web, live: LiveCP) -> None:
    """The journey's flake: the 30 s auto-refresh read the list just before a destroy committed
    and answered after the destroy's own refresh, drawing the destroyed row back."""
    import asyncio

    from warren import ids

    acct = await live.signup("Racing Rita")
    doomed = await sandbox_row(live, acct.team_id, uuid.uuid4(), status="paused")
    page = await web.signed_in_page(acct)
    rows = page.locator("#sandbox-rows tr")
    await expect(rows.filter(has_text=doomed)).to_have_count(1)

    stale_read, release, delivered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls = 0

    async def hold_first(route: Route) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            await route.continue_()
            return
        resp = await route.fetch()  # the list as it was before the destroy
        stale_read.set()
        await release.wait()
        await route.fulfill(response=resp)
        delivered.set()

    await page.route("**/dashboard/sandboxes/rows", hold_first)
    await page.evaluate("() => { window.warrenRefresh(); }")  # e.g. the auto-refresh timer
    await asyncio.wait_for(stale_read.wait(), 60)
    await live.sql("UPDATE sandboxes SET status = 'stopped' WHERE id = :id",
                   id=ids.parse_id(ids.Kind.SANDBOX, doomed))  # fmt: skip
    await page.evaluate("() => window.warrenRefresh()")  # the destroy action's refresh
    await expect(rows.filter(has_text=doomed)).to_have_count(0)
    release.set()
    await asyncio.wait_for(delivered.wait(), 60)
    await page.wait_for_timeout(300)  # let the late answer run through the page's handlers
    await expect(rows.filter(has_text=doomed)).to_have_count(0)
    await expect(page.get_by_role("heading", name="No sandboxes yet")).to_be_visible()
    await page.unroute("**/dashboard/sandboxes/rows")


async def test_launch_dialog_limits_and_error_message(web: Web, live: LiveCP) -> None:
    """Launch dialog: vCPUs 1 to 8, memory 128 to 8192 in steps of 128, timeout ≥ 0; a refused launch
    shows the server's error.message."""
    acct = await live.signup("Launch Larry")
    page = await web.signed_in_page(acct)
    await page.get_by_role("button", name="Launch sandbox").first.click()
    dialog = page.locator("#launch-dialog")
    await expect(dialog.get_by_label("Template")).to_have_value("minimal")
    await expect(dialog.get_by_label("Template")).to_be_focused()
    vcpus, memory, timeout = (
        dialog.get_by_label("vCPUs"),
        dialog.get_by_label("Memory (MB)"),
        dialog.get_by_label("Idle timeout (s)"),
    )
    for field, bad in ((vcpus, "9"), (vcpus, "0"), (memory, "200"), (memory, "8320"), (timeout, "-1")):
        await field.fill(bad)
        assert await field.evaluate("el => el.checkValidity()") is False, (bad,)
        await field.evaluate("el => { el.value = el.defaultValue; }")
    await vcpus.fill("2")
    await memory.fill("1024")
    await timeout.fill("60")
    await web.shot(page, "launch-dialog")
    await dialog.get_by_role("button", name="Launch").click()
    # No host has registered in this test: the scheduler's 503 message is shown in the dialog.
    await expect(dialog.locator(".form-error")).to_contain_text("no online platform hosts")
    await web.shot(page, "launch-error")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_detail_page_of_a_stopped_sandbox(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Detail Dora")
    sid = await sandbox_row(live, acct.team_id, uuid.uuid4(), status="stopped", vcpus=4, memory_mb=2048)
    page = await web.signed_in_page(acct)
    await page.goto(f"/dashboard/sandboxes/{sid}")
    await expect(page.locator(".breadcrumb")).to_have_text(f"Sandboxes / {sid}")
    await expect(page.get_by_test_id("sandbox-id")).to_have_text(sid)
    await expect(page.locator(".kv")).to_contain_text("2 GB")
    await expect(page.get_by_text("Live stats need a running or paused sandbox")).to_be_visible()
    await web.shot(page, "sandbox-detail-stopped")
    await page.goto("/dashboard/sandboxes/sb-doesnotexist")
    await expect(page.get_by_test_id("error-message")).to_have_text("invalid sandbox ID")


async def test_templates_filter_size_launch_prefill_and_delete(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Template Tom")
    await live.sql(
        """INSERT INTO templates (id, name, type, vcpus, memory_mb, size_bytes, team_id)
           VALUES (:id, 'after-apt-install', 'snapshot', 2, 1024, 22020096, :team)""",
        id=uuid.uuid4(),
        team=acct.team_uuid,
    )
    page = await web.signed_in_page(acct)
    await page.get_by_role("link", name="Templates").click()
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    snap = rows.filter(has_text="after-apt-install")
    await expect(snap).to_contain_text("Snapshot")
    await expect(snap).to_contain_text("21.0 MB")
    await expect(snap).to_contain_text("1 GB")
    minimal = rows.filter(has_text="minimal")
    await expect(minimal).to_contain_text("Platform")
    await expect(minimal).to_contain_text("Image")
    await expect(minimal.get_by_role("button", name="Delete minimal")).to_have_count(0)  # platform template
    await web.shot(page, "templates-all")

    await page.get_by_role("link", name="Snapshots").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("after-apt-install")
    await page.get_by_role("link", name="Images").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("minimal")
    await page.get_by_role("link", name="All").click()

    # Launch from a snapshot: the dialog is pre-filled with the snapshot's specs.
    await snap.get_by_role("button", name="Launch from after-apt-install").click()
    dialog = page.locator("#launch-dialog")
    await expect(dialog.get_by_label("Template")).to_have_value("after-apt-install")
    await expect(dialog.get_by_label("vCPUs")).to_have_value("2")
    await expect(dialog.get_by_label("Memory (MB)")).to_have_value("1024")
    await expect(dialog.get_by_label("Idle timeout (s)")).to_have_value("0")
    await web.shot(page, "launch-from-snapshot")
    await page.keyboard.press("Escape")

    await snap.get_by_role("button", name="Delete after-apt-install").click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
    await expect(rows).to_have_count(1)
    await expect(page.locator(".toast")).to_contain_text("Deleted after-apt-install")
    await page.get_by_role("link", name="Snapshots").click()
    await expect(page.get_by_role("heading", name="No snapshots yet")).to_be_visible()
    await web.shot(page, "templates-empty")


async def test_a_refused_refresh_shows_the_servers_reason(web: Web, live: LiveCP) -> None:
    """The list's refresh shows the reason a refusal's envelope gives (503 database_busy under
    load), as the page's other requests do; only an answer without one is "Something went
    wrong" (it said that for every refusal)."""
    acct = await live.signup("Refused Rhea")
    page = await web.signed_in_page(acct)
    busy = "the control plane's database connections are all busy; retry shortly"
    answers = [
        (503, json.dumps({"error": {"code": "database_busy", "message": busy}}), "application/json"),
        (502, "Bad Gateway", "text/plain"),  # e.g. a proxy in front: no envelope
    ]

    async def refuse(route: Route) -> None:
        # Marked as the script's: the server then answers a refusal with its envelope
        # (tests/security/test_attack_session34_team_rate.py), not the error page.
        assert route.request.headers.get("x-requested-with") == "fetch", route.request.headers
        status, body, kind = answers.pop(0)
        await route.fulfill(status=status, body=body, content_type=kind)

    await page.get_by_label("Auto-refresh").uncheck()  # only the two clicks ask
    await page.route("**/dashboard/sandboxes/rows", refuse)
    errors = page.locator(".toast.error")
    await page.click("#refresh-button")
    await expect(errors).to_have_text([busy])
    await page.click("#refresh-button")  # enabled again once the first refresh ended
    await expect(errors.last).to_have_text("Something went wrong")
    assert answers == []
