"""Session 11's hostile tenant: the owner of a BYOC team writing the host list without bound.

A BYOC team's owner makes its own host records (``POST /v1/hosts``, type ``byoc``): a pending
host costs one request and no machine. Its ``provider`` and ``availability_zone`` were kept
whole (a JSON body's MiB each), a team could make any number of hosts, and a host any number
of tags; every host list read them all. Expected: labels as long as a tag (128 characters),
64 tags a host, 1000 hosts a team (429 ``quota_exceeded``, exactly, under concurrency), and
another team unaffected.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.cp import InProcessCP, User, set_byoc
from warren import ids
from warren.cp.services import host_link
from warren.cp.services import hosts as hosts_svc


@pytest.fixture(scope="module")
async def admin(cp: InProcessCP) -> User:
    return await cp.signup(admin=True)


async def _byoc_owner(cp: InProcessCP, admin: User) -> User:
    owner = await cp.signup()
    await set_byoc(admin, owner.team_id)
    return owner


def _host(owner: User, **extra: str) -> dict[str, str]:
    return {"type": "byoc", "team_id": owner.team_id, **extra}


async def test_long_labels_are_refused(cp: InProcessCP, admin: User) -> None:
    owner = await _byoc_owner(cp, admin)
    for field in ("provider", "availability_zone"):
        r = await owner.req("POST", "/v1/hosts", json=_host(owner, **{field: "p" * 900_000}))
        assert r.status_code == 400, (field, r.status_code, r.text[:200])
        r = await owner.req("POST", "/v1/hosts", json=_host(owner, **{field: "p" * 129}))
        assert r.status_code == 400, (field, r.status_code, r.text[:200])
    longest = _host(owner, provider="p" * 128, availability_zone="z" * 128)
    r = await owner.req("POST", "/v1/hosts", json=longest)
    assert r.status_code == 201, r.text[:200]
    hosts = (await owner.req("GET", "/v1/hosts")).json()
    assert len(hosts) == 1, hosts


async def test_a_host_takes_at_most_64_tags(cp: InProcessCP, admin: User) -> None:
    owner = await _byoc_owner(cp, admin)
    host_id, _ = await owner.create_host("byoc", owner.team_id)
    for i in range(64):
        r = await owner.req("POST", f"/v1/hosts/{host_id}/tags", json={"tag": f"t{i:03d}-" + "x" * 120})
        assert r.status_code == 204, r.text[:200]
    r = await owner.req("POST", f"/v1/hosts/{host_id}/tags", json={"tag": "one-too-many"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text[:200]
    # A tag the host already has is still a no-op, and a removed one frees its place.
    r = await owner.req("POST", f"/v1/hosts/{host_id}/tags", json={"tag": "t000-" + "x" * 120})
    assert r.status_code == 204, r.text[:200]
    r = await owner.req("DELETE", f"/v1/hosts/{host_id}/tags/t001-" + "x" * 120)
    assert r.status_code == 204, r.text[:200]
    r = await owner.req("POST", f"/v1/hosts/{host_id}/tags", json={"tag": "one-too-many"})
    assert r.status_code == 204, r.text[:200]
    tags = (await owner.req("GET", f"/v1/hosts/{host_id}/tags")).json()
    assert len(tags) == 64, len(tags)


async def test_a_burst_of_host_creates_stops_at_the_bound(
    cp: InProcessCP, admin: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hosts_svc, "MAX_HOSTS_PER_TEAM", 5, raising=False)
    owner = await _byoc_owner(cp, admin)
    results = await asyncio.gather(*(owner.req("POST", "/v1/hosts", json=_host(owner)) for _ in range(12)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] * 5 + [429] * 7, codes
    assert all(r.json()["error"]["code"] == "quota_exceeded" for r in results if r.status_code == 429)
    assert len((await owner.req("GET", "/v1/hosts")).json()) == 5
    # Another BYOC team has its own room; a deleted host frees one.
    other = await _byoc_owner(cp, admin)
    assert (await other.req("POST", "/v1/hosts", json=_host(other))).status_code == 201
    first = next(r.json()["host"]["id"] for r in results if r.status_code == 201)
    assert (await owner.req("DELETE", f"/v1/hosts/{first}")).status_code in (200, 204)
    assert (await owner.req("POST", "/v1/hosts", json=_host(owner))).status_code == 201


async def test_a_byoc_agent_refreshing_in_a_loop_leaves_no_rows_behind(
    cp: InProcessCP, admin: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent of a BYOC host is the tenant's own program: it may call refresh as often as
    it likes. Each call kept the spent token's row for good (revoked, never deleted). (Since
    session 12 refreshes are rate limited, test_attack_session12_byoc.py; not here.)"""
    monkeypatch.setattr(host_link, "REFRESH_BURST", 1000.0)
    owner = await _byoc_owner(cp, admin)
    host_id, token = await owner.create_host("byoc", owner.team_id)
    body = {"token": token, "address": "127.0.0.9:7001", "arch": "amd64", "cpu_cores": 2, "memory_mb": 1024}
    r = await cp.http.post("/v1/hosts/register", json={**body, "disk_gb": 10})
    assert r.status_code == 201, r.text[:300]
    refresh = r.json()["refresh_token"]
    for _ in range(40):
        r = await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": refresh})
        assert r.status_code == 200, r.text[:300]
        refresh = r.json()["refresh_token"]
    held = await cp.sql(
        "SELECT count(*) FROM host_refresh_tokens WHERE host_id = :h", h=ids.parse_id(ids.Kind.HOST, host_id)
    )
    assert held[0][0] <= 2, held
    # The last one still works; a spent one does not.
    assert (await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": refresh})).status_code == 200
    assert (await cp.http.post("/v1/hosts/auth/refresh", json={"refresh_token": refresh})).status_code == 401
