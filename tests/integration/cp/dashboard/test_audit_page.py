"""The dashboard's Audit page (issue 18 item 3): the team's records for its owners and admins,
the filters, the next page, and the nav link; rendered HTML read over httpx."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.cp.api.conftest import JWT_SECRET, PUBLIC_URL, User, add_member, make_settings, signup
from warren import clock
from warren.cp.app import create_app
from warren.cp.dashboard import audit_page
from warren.cp.dashboard import session as sessions


@pytest.fixture(scope="module")
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(make_settings(db_url))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            yield c


async def _page(client: httpx.AsyncClient, user: User, query: str = "") -> httpx.Response:
    cookie, _ = sessions.encode(JWT_SECRET, sessions.Session(csrf="c" * 43, token=user.token))
    return await client.get(
        "/dashboard/audit" + query,
        headers={"Accept": "text/html", "Cookie": f"{sessions.COOKIE_NAME}={cookie}"},
    )


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr data-row-id="(log-[0-9a-z]+)">', page)


async def _keys(client: httpx.AsyncClient, user: User, names: list[str]) -> list[str]:
    out = []
    try:
        for name in names:
            r = await client.post("/v1/api-keys", json={"name": name}, headers=user.h)
            out.append(r.json()["id"])
            clock.advance(1)
    finally:
        clock.reset()
    return out


async def test_owners_see_their_team_s_records_with_filters(client: httpx.AsyncClient) -> None:
    owner, other = await signup(client, name="PageOwner"), await signup(client, name="Other")
    [mine] = await _keys(client, owner, ["mine"])
    [theirs] = await _keys(client, other, ["theirs"])
    r = await _page(client, owner)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'href="/dashboard/audit" aria-current="page"' in r.text  # the nav link, current
    assert mine in r.text and theirs not in r.text and len(_rows(r.text)) == 2  # the key, the signup
    assert "127.0.0.1" in r.text and 'data-status="success"' in r.text
    assert len(_rows((await _page(client, owner, "?action=revoke")).text)) == 0
    assert len(_rows((await _page(client, owner, "?resource_type=api_key&action=create")).text)) == 1
    bad = await _page(client, owner, "?since=yesterday")
    assert bad.status_code == 200 and 'data-testid="audit-problem"' in bad.text and not _rows(bad.text)
    # Hostile filter text is shown escaped, never as markup.
    hostile = await _page(client, owner, "?actor=%3Cscript%3Ealert(1)%3C/script%3E")
    assert "<script>alert(1)" not in hostile.text and html.escape("<script>") in hostile.text


async def test_members_are_refused_and_their_nav_entry_is_disabled(client: httpx.AsyncClient) -> None:
    owner = await signup(client, name="Owner2")
    member = await add_member(client, owner, await signup(client, name="Member2"))
    r = await _page(client, member)
    assert r.status_code == 403 and audit_page.MANAGERS_ONLY in r.text
    assert 'data-testid="nav-audit-disabled"' in r.text and 'href="/dashboard/audit"' not in r.text
    # The member's refused change shows on the owner's page, with what was asked.
    assert (
        await client.patch(f"/v1/teams/{owner.team_id}", json={"name": "x"}, headers=member.h)
    ).status_code == 403
    page = (await _page(client, owner, "?action=failed")).text
    assert (
        len(_rows(page)) == 1
        and "PATCH /v1/teams/{team_id} → 403" in page
        and 'data-status="warning"' in page
    )


async def test_next_page_links_through_every_record(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_page, "PAGE_SIZE", 2)
    owner = await signup(client, name="Pager")
    keys = await _keys(client, owner, [f"k{i}" for i in range(5)])
    seen: list[str] = []
    query = "?resource_type=api_key"
    for _ in range(5):
        page = (await _page(client, owner, query)).text
        seen += [k for k in re.findall(r"key-[0-9a-z]{25}", page) if k not in seen]
        found = re.search(r'href="/dashboard/audit(\?[^"]*cursor=[^"]*)" rel="next"', page)
        if found is None:
            break
        query = html.unescape(found.group(1))
    assert seen == list(reversed(keys))
    assert "No older records" not in page and "Newest" in page
