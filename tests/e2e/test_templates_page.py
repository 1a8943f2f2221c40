"""The Templates page and a build's page (issue 13: "the dashboard shows a build's log"): the
recent builds with their status, the log of a running build growing live as the build writes
it (through the build log writer the builds use), its final state with the failed step and exit
code, and log text that looks like HTML shown as text.

No agent runs here: the build rows are written like a build's runner writes them (the row by
SQL, the log by ``template_build_log.LogWriter``); the builds themselves are tested in
``tests/integration/cp/api/test_template_builds.py`` and the SDK/CLI suites."""

from __future__ import annotations

import uuid

import pytest
from playwright.async_api import expect

from warren import ids
from warren.cp.services.template_build_log import LogWriter

from .conftest import Account, LiveCP, Web

pytestmark = pytest.mark.e2e

SPEC = "FROM minimal\nRUN echo one\nRUN exit 3\n"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>&amp;\n'


async def _build_row(live: LiveCP, acct: Account, name: str, *, status: str = "running") -> uuid.UUID:
    build = uuid.uuid4()
    await live.sql(
        """INSERT INTO template_builds (id, team_id, name, status, spec, step, steps, started_at)
           VALUES (:id, :team, :name, :status, :spec, 1, 3, now())""",
        id=build, team=acct.team_uuid, name=name, status=status, spec=SPEC,
    )  # fmt: skip
    return build


async def test_a_running_builds_log_grows_live_then_shows_the_failure(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Builder Bea")
    build = await _build_row(live, acct, "web-env")
    build_ref = ids.format_id(ids.Kind.BUILD, build)
    log = LogWriter(live.engine, build, 1 << 20)
    await log.write(b"[1/3] FROM minimal\n[2/3] RUN echo one\none\n")
    await log.flush()

    page = await web.signed_in_page(acct)
    await page.get_by_role("link", name="Templates").click()
    recent = page.locator("#recent-builds")
    row = recent.locator(f'tr[data-build-id="{build_ref}"]')
    await expect(row).to_contain_text("web-env")
    await expect(row.locator("[data-build-status]")).to_have_text("Running")
    await expect(row).to_contain_text("1/3")
    await web.shot(page, "templates-recent-builds")

    await row.get_by_role("link", name=build_ref).click()
    await expect(page.get_by_test_id("build-id")).to_have_text(build_ref)
    pre = page.locator("#build-log")
    await expect(pre).to_contain_text("[2/3] RUN echo one\none")

    # The build goes on: what it writes shows up without a reload, HTML-looking text as text.
    await live.sql("UPDATE template_builds SET step = 3 WHERE id = :id", id=build)
    await log.write(b"[3/3] RUN exit 3\n" + HOSTILE.encode())
    await log.flush()
    await expect(pre).to_contain_text("[3/3] RUN exit 3")
    await expect(pre).to_contain_text(HOSTILE.strip())
    await expect(page.locator('[data-build-field="step"]')).to_have_text("3/3")
    await expect(pre.locator("img, script")).to_have_count(0)
    await web.shot(page, "build-running")

    # It fails: the page reloads itself into the final state.
    await live.sql(
        """UPDATE template_builds SET status = 'failed', failed_step = 3, exit_code = 3,
               error = 'step 3 (RUN exit 3) exited with code 3', finished_at = now() WHERE id = :id""",
        id=build,
    )
    await expect(page.get_by_test_id("failed-step")).to_have_text("3")
    await expect(page.get_by_test_id("exit-code")).to_have_text("3")
    await expect(page.get_by_test_id("build-error")).to_contain_text("exited with code 3")
    await expect(pre).to_contain_text("[1/3] FROM minimal")
    await expect(pre).to_contain_text(HOSTILE.strip())
    await expect(page.locator("#build-log-state")).to_have_text("The whole log.")
    assert await page.evaluate("window.__pwned === undefined")
    await web.shot(page, "build-failed")

    # The template page lists the build (no version yet: its only build failed).
    await page.locator(".breadcrumb").get_by_role("link", name="web-env").click()
    await expect(page.get_by_test_id("template-name")).to_have_text("web-env")
    await expect(page.locator("#builds-table [data-build-status]")).to_have_text("Failed")


async def test_another_teams_build_is_not_found(web: Web, live: LiveCP) -> None:
    owner = await live.signup("Owner Olga")
    other = await live.signup("Other Otto")
    build = await _build_row(live, owner, "private-env", status="failed")
    ref = ids.format_id(ids.Kind.BUILD, build)
    page = await web.signed_in_page(other)
    resp = await page.goto(f"/dashboard/templates/private-env/builds/{ref}")
    assert resp is not None and resp.status == 404
    await expect(page.get_by_test_id("error-message")).to_contain_text("not found")
    api = await page.request.get(f"/dashboard/templates/private-env/builds/{ref}/log?offset=0")
    assert api.status == 404
    for bad in ("offset=-1", f"offset={2**64}", "offset=x"):
        api = await page.request.get(f"/dashboard/templates/private-env/builds/{ref}/log?{bad}")
        assert api.status in (400, 422), bad
    await page.goto("/dashboard/templates")
    await expect(page.locator("#recent-builds")).not_to_contain_text("private-env")
