"""The runtime tier in the dashboard (issue 16): the launch dialog offers it (a memory snapshot
makes the choice: gVisor), a refused launch names the runtime no host offers, and the sandbox
pages show a sandbox's runtime and how a paused one is paused. No host agent: rows are written
straight into the database (launching on a real gVisor host is test_gvisor_sandboxes.py's)."""

from __future__ import annotations

import uuid

import pytest
from playwright.async_api import expect

from warren import ids

from .conftest import LiveCP, Web, sandbox_row

pytestmark = pytest.mark.e2e


async def test_launch_dialog_offers_the_runtime_and_a_memory_snapshot_chooses_gvisor(
    web: Web, live: LiveCP
) -> None:
    acct = await live.signup("Runtime Rita")
    for name, kind in (("files-only", "filesystem"), ("with-memory", "memory")):
        await live.sql(
            """INSERT INTO templates (id, name, type, vcpus, memory_mb, size_bytes, team_id, snapshot_kind)
               VALUES (:id, :name, 'snapshot', 1, 512, 1024, :team, :kind)""",
            id=uuid.uuid4(), name=name, team=acct.team_uuid, kind=kind,
        )  # fmt: skip
    page = await web.signed_in_page(acct)
    await page.get_by_role("button", name="Launch sandbox").first.click()
    dialog = page.locator("#launch-dialog")
    runtime = dialog.get_by_label("Runtime")
    template = dialog.get_by_label("Template")
    await template.select_option("minimal")
    await expect(runtime).to_have_value("")  # the platform's default
    await expect(runtime.locator("option")).to_have_text(
        ["Platform default", "runc (host kernel)", "crun (host kernel)", "gVisor (user-space kernel)"]
    )
    await expect(template.locator("option", has_text="with-memory")).to_have_text(
        "with-memory (memory snapshot)"
    )
    await template.select_option("with-memory")
    await expect(runtime).to_have_value("gvisor")
    await expect(runtime).to_be_disabled()
    await expect(
        dialog.get_by_text("A memory snapshot resumes its processes, on gVisor only.")
    ).to_be_visible()
    await web.shot(page, "launch-memory-snapshot")
    await template.select_option("files-only")
    await expect(runtime).to_be_enabled()
    await expect(runtime).to_have_value("")  # what the user had chosen, not the snapshot's
    await runtime.select_option("crun")
    await template.select_option("with-memory")
    await expect(runtime).to_have_value("gvisor")
    await template.select_option("minimal")
    await expect(runtime).to_have_value("crun")
    await runtime.select_option("gvisor")
    await dialog.get_by_role("button", name="Launch").click()
    # No host in this test: the scheduler's refusal names the runtime asked for.
    await expect(dialog.locator(".form-error")).to_contain_text("with the gvisor runtime")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_the_sandbox_pages_show_the_runtime_and_how_a_paused_one_is_paused(
    web: Web, live: LiveCP
) -> None:
    acct = await live.signup("Paused Paula")
    host = uuid.uuid4()
    on_disk = await sandbox_row(live, acct.team_id, host, status="paused")
    frozen = await sandbox_row(live, acct.team_id, host, status="paused")
    running = await sandbox_row(live, acct.team_id, host)
    for sid, runtime, state in (
        (on_disk, "gvisor", "disk"),
        (frozen, "runc", None),
        (running, "gvisor", None),
    ):
        await live.sql(
            "UPDATE sandboxes SET runtime = :r, paused_state = :p WHERE id = :id",
            r=runtime, p=state, id=ids.parse_id(ids.Kind.SANDBOX, sid),
        )  # fmt: skip
    page = await web.signed_in_page(acct)
    rows = page.locator("#sandbox-rows tr")
    await expect(rows.filter(has_text=on_disk)).to_contain_text("gvisor")
    await expect(rows.filter(has_text=frozen)).not_to_contain_text("gvisor")
    await page.goto(f"/dashboard/sandboxes/{on_disk}")
    await expect(page.get_by_test_id("sandbox-runtime")).to_have_text("gvisor")
    await expect(page.get_by_test_id("sandbox-paused-state")).to_have_text("to disk (memory freed)")
    await web.shot(page, "sandbox-detail-paused-to-disk")
    await page.goto(f"/dashboard/sandboxes/{frozen}")
    await expect(page.get_by_test_id("sandbox-runtime")).to_have_text("runc")
    await expect(page.get_by_test_id("sandbox-paused-state")).to_have_text("in memory (frozen)")
    await page.goto(f"/dashboard/sandboxes/{running}")
    await expect(page.get_by_test_id("sandbox-runtime")).to_have_text("gvisor")
    await expect(page.get_by_test_id("sandbox-paused-state")).to_have_count(0)
    await expect(page.get_by_test_id("sandbox-end-reason")).to_have_count(0)  # active: no reason
    # An ended one says why it ended.
    ended = await sandbox_row(live, acct.team_id, host, status="stopped")
    await live.sql(
        "UPDATE sandboxes SET end_reason = 'lifetime_ended' WHERE id = :id",
        id=ids.parse_id(ids.Kind.SANDBOX, ended),
    )
    await page.goto(f"/dashboard/sandboxes/{ended}")
    await expect(page.get_by_test_id("sandbox-end-reason")).to_have_text("lifetime_ended")
