"""Runtime tiers over the REST API (issue 16), against a real control plane and database: hosts
report the runtimes they offer at registration and with each heartbeat (shown in
``GET /v1/hosts``), ``POST /v1/sandboxes`` takes ``runtime`` (default: the platform's
``default_runtime``, gvisor in this module) and a runtime no host offers is 503
``no_hosts_available`` naming it. Creates that reach a real agent are in
test_gvisor_sandboxes.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.cp import InProcessCP, User, set_byoc, sql
from warren import clock, ids

HOST_ADDRESS = "127.0.0.9:1"  # nothing listens: a create sent there never reaches an agent


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    try:
        async with InProcessCP(
            db_url, Path(tmp_path_factory.mktemp("cp-home")), default_runtime="gvisor"
        ) as server:
            yield server
    finally:
        clock.reset()


async def _register(cp: InProcessCP, token: str, **extra: Any) -> httpx.Response:
    body = {"token": token, "address": HOST_ADDRESS, "cpu_cores": 2, "memory_mb": 4096, **extra}
    return await cp.http.post("/v1/hosts/register", json=body)


async def _beat(cp: InProcessCP, host_id: str, jwt: str, body: Any) -> httpx.Response:
    return await cp.http.post(f"/v1/hosts/{host_id}/heartbeat", headers={"X-Host-Token": jwt}, json=body)


async def _runtimes(admin: User, host_id: str) -> list[str]:
    one = (await admin.req("GET", f"/v1/hosts/{host_id}")).json()["runtimes"]
    listed = [h["runtimes"] for h in (await admin.req("GET", "/v1/hosts")).json() if h["id"] == host_id]
    assert listed == [one]
    return list(one)


async def _byoc_team_with_host(cp: InProcessCP, admin: User, **register: Any) -> tuple[User, str, str]:
    """A BYOC team (it only ever uses its own hosts) with one registered host: (owner, host id,
    host JWT)."""
    owner = await cp.signup()
    await set_byoc(admin, owner.team_id)
    host_id, token = await owner.create_host("byoc", owner.team_id)
    r = await _register(cp, token, **register)
    assert r.status_code == 201, r.text
    return owner, host_id, r.json()["token"]


async def test_hosts_report_their_runtimes_at_registration_and_with_each_heartbeat(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    old, old_token = await admin.create_host()
    new, new_token = await admin.create_host()
    r = await _register(cp, old_token)  # an agent from before the tiers says nothing: runc
    assert r.status_code == 201 and r.json()["host"]["runtimes"] == ["runc"]
    old_jwt = r.json()["token"]
    r = await _register(cp, new_token, runtimes=["gvisor", "runc", "gvisor"])
    assert r.status_code == 201, r.text
    new_jwt = r.json()["token"]
    assert await _runtimes(admin, old) == ["runc"]
    assert await _runtimes(admin, new) == ["runc", "gvisor"]
    # Each heartbeat that says replaces what the host offered; one that does not keeps it.
    assert (await _beat(cp, old, old_jwt, {"runtimes": ["crun", "runc"]})).status_code == 204
    assert (await _beat(cp, new, new_jwt, {})).status_code == 204
    assert (await _beat(cp, new, new_jwt, None)).status_code == 204
    assert await _runtimes(admin, old) == ["runc", "crun"]
    assert await _runtimes(admin, new) == ["runc", "gvisor"]


async def test_runtimes_a_host_may_not_report_are_400_and_change_nothing(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    host_id, token = await admin.create_host()
    for bad in ([], ["kata"], ["runc"] * 9, "runc", ["x" * 100_000], [None]):
        r = await _register(cp, token, runtimes=bad)
        assert r.status_code == 400, (bad, r.text)
    r = await _register(cp, token, runtimes=["gvisor"])  # the refusals did not spend the token
    assert r.status_code == 201, r.text
    jwt = r.json()["token"]
    for bad in ([], ["kata"], ["runc"] * 9, {"runc": True}, [7]):
        r = await _beat(cp, host_id, jwt, {"runtimes": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (bad, r.text)
    assert await _runtimes(admin, host_id) == ["gvisor"]


async def test_a_runtime_that_is_not_offered_by_name_is_400(cp: InProcessCP) -> None:
    user = await cp.signup()
    for bad in ("kata", "", "GVISOR", 1, ["gvisor"], None):
        body: dict[str, Any] = {"runtime": bad}
        if bad is None:
            continue  # null is "not given": the default
        r = await user.req("POST", "/v1/sandboxes", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (bad, r.text)
        assert "runtime" in r.json()["error"]["message"]


async def test_the_default_runtime_applies_and_one_no_host_offers_is_503_naming_it(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    owner, host_id, _ = await _byoc_team_with_host(cp, admin, runtimes=["runc", "crun"])
    for body in (None, {"runtime": None}, {"runtime": "gvisor"}):  # no runtime: this CP's default, gvisor
        r = await owner.req("POST", "/v1/sandboxes", json=body)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "no_hosts_available"
        assert err["message"] == (
            "no online BYOC hosts available for team with the gvisor runtime "
            "(the online ones offer runc, crun)"
        )
    # runc is offered: the create goes to the host (whose agent cannot be reached here), and the
    # record says which runtime it asked for.
    for runtime in ("runc", "crun"):
        r = await owner.req("POST", "/v1/sandboxes", json={"runtime": runtime})
        assert r.status_code in (502, 503) and r.json()["error"]["code"] != "no_hosts_available", r.text
    host = ids.parse_id(ids.Kind.HOST, host_id)
    rows = await sql(
        cp, "SELECT runtime, status FROM sandboxes WHERE host_id = :h ORDER BY created_at", h=host
    )
    assert [tuple(r) for r in rows] == [("runc", "error"), ("crun", "error")]
