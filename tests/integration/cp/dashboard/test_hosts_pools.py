"""The dashboard's host tables show each host's warm pools, ready / target (issue 17): the
admin page's platform hosts and a BYOC team's Hosts page; rendered HTML read over httpx."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.cp.api.conftest import JWT_SECRET, PUBLIC_URL, User, make_settings, signup
from warren import ids
from warren.cp.app import create_app
from warren.cp.dashboard import session as sessions
from warren.cp.db.engine import to_async_url


@pytest.fixture(scope="module")
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(make_settings(db_url))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            yield c


async def _page(client: httpx.AsyncClient, user: User, path: str) -> str:
    cookie, _ = sessions.encode(JWT_SECRET, sessions.Session(csrf="c" * 43, token=user.token))
    r = await client.get(path, headers={"Accept": "text/html", "Cookie": f"{sessions.COOKIE_NAME}={cookie}"})
    assert r.status_code == 200, r.text
    return r.text


def _row(page: str, host_id: str) -> str:
    m = re.search(rf'<tr data-row-id="{host_id}">(.*?)</tr>', page, re.S)
    assert m is not None, page
    return m.group(1)


async def test_host_tables_show_pools(client: httpx.AsyncClient, db_url: str) -> None:
    admin, owner = await signup(client, name="PoolAdmin"), await signup(client, name="PoolOwner")
    engine = create_async_engine(to_async_url(db_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE users SET is_admin = true WHERE id = :u"),
                {"u": ids.parse_id(ids.Kind.USER, admin.user_id)},
            )
    finally:
        await engine.dispose()
    r = await client.put(f"/v1/admin/teams/{owner.team_id}/byoc", json={"enabled": True}, headers=admin.h)
    assert r.status_code == 204, r.text
    hosts = {}
    for who, body in ((admin, {"type": "regular"}), (owner, {"type": "byoc", "team_id": owner.team_id})):
        r = await client.post("/v1/hosts", json=body, headers=who.h)
        assert r.status_code == 201, r.text
        hosts[body["type"]] = r.json()["host"]["id"]
    bare = (await client.post("/v1/hosts", json={"type": "regular"}, headers=admin.h)).json()["host"]["id"]
    for who, kind, size in ((admin, "regular", 6), (owner, "byoc", 3)):
        r = await client.put(
            f"/v1/hosts/{hosts[kind]}/warm-pools/minimal", json={"size": size}, headers=who.h
        )
        assert r.status_code == 200, r.text

    admin_page = await _page(client, admin, "/admin")
    assert "Warm pools" in admin_page
    assert re.search(r"<code>minimal</code> 0 / 6", _row(admin_page, hosts["regular"]))
    assert "minimal" not in _row(admin_page, bare)
    hosts_page = await _page(client, owner, "/dashboard/hosts")
    assert re.search(r"<code>minimal</code> 0 / 3", _row(hosts_page, hosts["byoc"]))
