"""CSRF protection (issue 6 item 1): every state-changing dashboard request needs the CP's own
Origin (or Referer) AND the session's synchronizer token. A cross-site form post is refused.

The attacker page is served from another port on the same loopback address: "same-site" for the
browser, so the SameSite=Lax session cookie IS sent with its form posts — the server-side checks
are what refuse them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from .conftest import LiveCP, Web, other_site

pytestmark = pytest.mark.e2e


def _attacker_app(cp_url: str) -> Starlette:
    def form_page(action: str, fields: dict[str, str]) -> HTMLResponse:
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        return HTMLResponse(
            f"""<!doctype html><html><body><h1>You won a prize!</h1>
            <form id="f" method="post" action="{cp_url}{action}">{inputs}</form>
            <script>document.getElementById('f').submit();</script></body></html>"""
        )

    async def create_team(_: Request) -> HTMLResponse:
        # Even a guessed token field does not help: it is not this session's token.
        return form_page("/dashboard/actions/teams", {"name": "Evil Team", "csrf_token": "guessed"})

    async def login(_: Request) -> HTMLResponse:
        return form_page("/login", {"email": "attacker@example.com", "password": "attacker-pass"})

    async def logout(_: Request) -> HTMLResponse:
        return form_page("/logout", {})

    return Starlette(
        routes=[Route("/create-team", create_team), Route("/login", login), Route("/logout", logout)]
    )


@pytest.fixture
async def attacker(live: LiveCP, web: Web) -> AsyncIterator[str]:
    async with other_site(_attacker_app(live.url), web.net) as url:
        yield url


async def _post_from(page: Page, attacker_url: str, path: str, cp_path: str) -> tuple[int, str]:
    async with page.expect_response(lambda r: r.url.endswith(cp_path) and r.request.method == "POST") as info:
        await page.goto(attacker_url + path)
    resp = await info.value
    return resp.status, await resp.text()


async def test_cross_site_form_posts_are_refused(web: Web, live: LiveCP, attacker: str) -> None:
    victim = await live.signup("Victor Victim")
    page = await web.new_page(record=False)  # this test visits the attacker's origin on purpose
    await web.login(page, victim)

    status, body = await _post_from(page, attacker, "/create-team", "/dashboard/actions/teams")
    assert status == 403
    assert '"code":"csrf_failed"' in body.replace(" ", "")
    assert await live.sql("SELECT count(*) FROM teams WHERE name = 'Evil Team'") == [(0,)]

    # Login CSRF (signing the victim into the attacker's account) and forced logout are refused.
    status, body = await _post_from(page, attacker, "/login", "/login")
    assert status == 403 and "Cross-site request refused" in body
    status, body = await _post_from(page, attacker, "/logout", "/logout")
    assert status == 403 and "Cross-site request refused" in body
    await web.shot(page, "csrf-refused")

    # The victim is still signed in as themselves.
    await page.goto(live.url + "/dashboard/team")
    await expect(page.get_by_test_id("user-name")).to_have_text("Victor Victim")


async def test_same_origin_requests_need_the_session_token(web: Web, live: LiveCP) -> None:
    acct = await live.signup("Token Tess")
    page = await web.signed_in_page(acct)
    results = await page.evaluate(
        """async () => {
            const token = document.querySelector('meta[name=csrf-token]').content;
            const post = async (headers) => {
                const r = await fetch('/dashboard/actions/teams', {method: 'POST',
                    headers: Object.assign({'Content-Type': 'application/json'}, headers),
                    body: JSON.stringify({name: 'Token Team'})});
                return [r.status, (await r.json())];
            };
            return [await post({}), await post({'X-CSRF-Token': 'wrong'}),
                    await post({'X-CSRF-Token': token})];
        }"""
    )
    (no_token, no_body), (wrong, wrong_body), (ok, _) = results
    assert (no_token, no_body["error"]["code"]) == (403, "csrf_failed")
    assert (wrong, wrong_body["error"]["code"]) == (403, "csrf_failed")
    assert ok == 200

    # The right cookie and token from a foreign Origin (or with no Origin/Referer) are refused too.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    async with httpx.AsyncClient(base_url=live.url, cookies=cookies) as client:
        for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}, {}):
            r = await client.post(
                "/dashboard/actions/teams", json={"name": "Nope"}, headers={"X-CSRF-Token": token, **headers}
            )
            assert r.status_code == 403, headers
            assert r.json()["error"]["code"] == "csrf_failed"
        r = await client.post(
            "/dashboard/actions/teams",
            json={"name": "Via Httpx"},
            headers={"X-CSRF-Token": token, "Origin": live.url},
        )
        assert r.status_code == 200, r.text
