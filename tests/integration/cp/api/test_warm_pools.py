"""Warm pools through the hosts API (issue 17, docs/hosts.md "Warm pools"): who may set a pool's
size, what is refused, what a heartbeat reports and how ``GET /v1/hosts`` shows it. Against a
real control plane and database; hosts register over HTTP as an agent does (the scenarios with
real agents and their pools are at the end of this file)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import httpx
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP, User, set_byoc, sql
from tests.harness.multihost import fleet, wait_for
from warren import ids


async def _register(cp: InProcessCP, token: str) -> dict[str, Any]:
    # Port 9 on loopback: nothing listens there, so an RPC to this "agent" is never answered.
    r = await cp.http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:9"})
    assert r.status_code == 201, r.text
    creds: dict[str, Any] = r.json()
    return creds


async def _beat(cp: InProcessCP, host_id: str, creds: dict[str, Any], body: Any) -> httpx.Response:
    return await cp.http.post(
        f"/v1/hosts/{host_id}/heartbeat", headers={"X-Host-Token": creds["token"]}, json=body
    )


async def _put(user: User, host_id: str, template: str, size: Any) -> httpx.Response:
    return await user.req("PUT", f"/v1/hosts/{host_id}/warm-pools/{template}", json={"size": size})


async def test_who_may_set_a_pool(cp: InProcessCP) -> None:
    admin, owner, outsider = await cp.signup(admin=True), await cp.signup(), await cp.signup()
    await set_byoc(admin, owner.team_id)
    team_admin, member = await cp.join(owner, "admin"), await cp.join(owner, "member")
    regular, _ = await admin.create_host()
    byoc, _ = await owner.create_host("byoc", owner.team_id)

    # Pending hosts: the size is stored and shown, applied when the host reports in.
    r = await _put(admin, regular, "minimal", 3)
    assert r.status_code == 200, r.text
    assert r.json()["warm_pools"] == [{"template": "minimal", "target": 3, "ready": 0}]
    assert (await _put(owner, byoc, "minimal", 2)).status_code == 200
    assert (await _put(team_admin, byoc, "minimal", 4)).status_code == 200
    assert (await admin.req("GET", f"/v1/hosts/{byoc}")).json()["warm_pools"] == [
        {"template": "minimal", "target": 4, "ready": 0}
    ]
    # A plain member sees the host but may not change its pools.
    r = await _put(member, byoc, "minimal", 1)
    assert r.status_code == 403 and "owners and admins" in r.json()["error"]["message"], r.text
    assert (await member.req("GET", f"/v1/hosts/{byoc}")).json()["warm_pools"][0]["target"] == 4
    # Anyone else: a platform host or another team's host is not there for them (404, as for
    # every host verb).
    assert (await _put(owner, regular, "minimal", 1)).status_code == 404
    assert (await _put(outsider, byoc, "minimal", 1)).status_code == 404
    assert (await _put(outsider, regular, "minimal", 1)).status_code == 404
    # The list shows the pools too; a host without any shows none.
    listed = {h["id"]: h for h in (await admin.req("GET", "/v1/hosts")).json()}
    assert listed[regular]["warm_pools"] == [{"template": "minimal", "target": 3, "ready": 0}]
    other, _ = await admin.create_host()
    assert "warm_pools" not in (await admin.req("GET", f"/v1/hosts/{other}")).json()
    # Audited, one row per change.
    rows = await sql(cp, "SELECT action FROM audit_logs WHERE action = 'set_warm_pool'")
    assert len(rows) == 3


async def test_validation(cp: InProcessCP) -> None:
    admin, owner = await cp.signup(admin=True), await cp.signup()
    host, _ = await admin.create_host()
    for size in (-1, 129, 10**30, "3", True, 2.5, None):
        r = await _put(admin, host, "minimal", size)
        assert r.status_code == 400, (size, r.text)
    r = await admin.req("PUT", f"/v1/hosts/{host}/warm-pools/minimal", json={"size": 1, "x": 1})
    assert r.status_code == 400
    r = await _put(admin, host, "minimal", 129)
    assert "between 0 and 128" in r.json()["error"]["message"]
    assert (await _put(admin, host, "bad$name", 1)).status_code == 400
    assert (await _put(admin, host, "no-such-template", 1)).status_code == 404
    assert (await _put(admin, "host-nope", "minimal", 1)).status_code == 400
    # A team's own template is not pooled on a platform host (whoever asks next would claim it).
    team_uuid = str(ids.parse_id(ids.Kind.TEAM, owner.team_id))
    await sql(
        cp,
        "INSERT INTO templates (id, name, team_id, type) "
        "VALUES (gen_random_uuid(), 'mine', CAST(:t AS uuid), 'base')",
        t=team_uuid,
    )
    assert (await _put(admin, host, "mine", 1)).status_code == 404
    # Snapshots are never pooled.
    await sql(
        cp,
        "INSERT INTO templates (id, name, team_id, type) "
        "VALUES (gen_random_uuid(), 'snap', '00000000-0000-0000-0000-000000000000', 'snapshot')",
    )
    r = await _put(admin, host, "snap", 1)
    assert r.status_code == 400 and "snapshot" in r.json()["error"]["message"]
    # Nothing of the refused calls was stored.
    assert (await admin.req("GET", f"/v1/hosts/{host}")).json().get("warm_pools") is None
    # Pools by runtime (session 13): a runtime the host offers (a host that never said offers
    # runc), never gVisor, never one unknown.
    for name, says in (
        ("minimal@crun", "this host does not offer the crun runtime (it offers runc)"),
        ("minimal@gvisor", "gVisor sandboxes are not pooled"),
        ("minimal@kata", "unknown runtime 'kata'"),
        ("minimal@", "unknown runtime ''"),
        ("@runc", "invalid template name"),
    ):
        r = await _put(admin, host, name, 1)
        assert r.status_code == 400 and says in r.json()["error"]["message"], (name, r.text)
    r = await _put(admin, host, "minimal@runc", 2)
    assert r.status_code == 200, r.text
    assert r.json()["warm_pools"] == [{"template": "minimal@runc", "target": 2, "ready": 0}]


async def test_heartbeat_reports_pools_and_get_shows_them(cp: InProcessCP) -> None:
    admin = await cp.signup(admin=True)
    host, token = await admin.create_host()
    creds = await _register(cp, token)
    # The host's default runtime, as its agent says it (none said yet: not shown).
    assert "default_runtime" not in (await admin.req("GET", f"/v1/hosts/{host}")).json()
    assert (await _beat(cp, host, creds, {"default_runtime": "crun"})).status_code == 204
    assert (await admin.req("GET", f"/v1/hosts/{host}")).json()["default_runtime"] == "crun"
    for bad_default in ("kata", "host", "", ["crun"]):
        assert (await _beat(cp, host, creds, {"default_runtime": bad_default})).status_code == 400
    report = {"warm_pools": [{"template": "minimal", "target": 8, "ready": 5}]}
    assert (await _beat(cp, host, creds, report)).status_code == 204
    got = (await admin.req("GET", f"/v1/hosts/{host}")).json()
    assert got["warm_pools"] == [{"template": "minimal", "target": 8, "ready": 5}]
    # An empty body (an older agent) changes nothing but the heartbeat time.
    assert (await _beat(cp, host, creds, None)).status_code == 204
    assert (await admin.req("GET", f"/v1/hosts/{host}")).json()["warm_pools"][0]["ready"] == 5
    # An empty list: no pools any more.
    assert (await _beat(cp, host, creds, {"warm_pools": []})).status_code == 204
    assert (await admin.req("GET", f"/v1/hosts/{host}")).json().get("warm_pools") is None

    # What a hostile agent may send is bounded: 400, and nothing stored.
    bad: list[Any] = [
        {"warm_pools": [{"template": f"t{i}", "target": 1, "ready": 1} for i in range(33)]},
        {"warm_pools": [{"template": "minimal", "target": -1, "ready": 0}]},
        {"warm_pools": [{"template": "minimal", "target": 1, "ready": 2**31}]},
        {"warm_pools": [{"template": "x" * 201, "target": 1, "ready": 0}]},
        {"warm_pools": [{"template": "../etc", "target": 1, "ready": 0}]},
        {"warm_pools": [{"template": "minimal", "target": 1}]},
        {"warm_pools": [{"template": "minimal", "target": 1, "ready": 0, "extra": 1}]},
        {"warm_pools": {"minimal": 1}},
    ]
    for body in bad:
        r = await _beat(cp, host, creds, body)
        assert r.status_code == 400, (body, r.text)
    assert (await admin.req("GET", f"/v1/hosts/{host}")).json().get("warm_pools") is None


async def test_online_host_whose_agent_cannot_be_reached(cp: InProcessCP) -> None:
    """Setting a pool on an online host asks its agent at once: nobody answers at this host's
    address, so the call fails (502/503) and the size is not stored."""
    admin = await cp.signup(admin=True)
    host, token = await admin.create_host()
    creds = await _register(cp, token)
    assert (await _beat(cp, host, creds, {"warm_pools": []})).status_code == 204
    r = await _put(admin, host, "minimal", 2)
    assert r.status_code in (502, 503), r.text
    assert (await admin.req("GET", f"/v1/hosts/{host}")).json().get("warm_pools") is None


# ------------------------------------------------------------------------------ real agents

# Filling a pool builds its sandboxes one at a time, after any create: slow on a loaded machine.
FILL_S = 240.0


async def _pools_in_db(cp: InProcessCP, agent: AgentProcess) -> list[dict[str, Any]]:
    rows = await sql(cp, "SELECT warm_pools FROM hosts WHERE id = :h", h=agent.host_uuid)
    return list(rows[0][0] or []) if rows else []


async def _ready(user: User, host_id: str) -> int:
    pools = (await user.req("GET", f"/v1/hosts/{host_id}")).json().get("warm_pools") or []
    return sum(p["ready"] for p in pools if p["template"] == "minimal")


@pytest.mark.root
async def test_pools_on_real_agents(cp: InProcessCP) -> None:
    """Two real agents, a pool of 2 on the first: its members appear in no list and count
    against no quota, creates go to the host with ready members, a host delete (Terminate)
    clears its pool, and a size set through the API is applied again after an agent restart."""
    admin, user = await cp.signup(admin=True), await cp.signup()
    key = await user.api_key()
    mh_headers = {"X-API-Key": key}
    async with fleet(cp, "cp-warm-pools") as f:
        pooled = await f.add(admin, "127.0.0.171")
        other = await f.add(admin, "127.0.0.172")
        r = await _put(admin, pooled.host_id, "minimal", 2)
        assert r.status_code == 200, r.text
        assert r.json()["warm_pools"][0]["target"] == 2
        await wait_for(lambda: _has_ready(admin, pooled.host_id, 2), FILL_S, "a pool of 2 reported ready")

        # Nobody's: not listed, not counted (a quota of 2 still takes 2 creates).
        assert (await cp.http.get("/v1/sandboxes", headers=mh_headers)).json() == []
        team = ids.parse_id(ids.Kind.TEAM, user.team_id)
        await sql(cp, "UPDATE teams SET quota_sandboxes = 2 WHERE id = :t", t=team)
        made = []
        for _ in range(2):
            r = await cp.http.post("/v1/sandboxes", json={}, headers=mh_headers)
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
        # The scheduler chose the host with ready members both times (round robin over the
        # two would have put one on the other host).
        rows = await sql(
            cp, "SELECT DISTINCT host_id FROM sandboxes WHERE team_id = :t AND status = 'running'", t=team
        )
        assert [row[0] for row in rows] == [pooled.host_uuid]
        assert (await cp.http.post("/v1/sandboxes", json={}, headers=mh_headers)).status_code == 429
        listed = {s["id"] for s in (await cp.http.get("/v1/sandboxes", headers=mh_headers)).json()}
        assert listed == set(made)
        for sb in made:
            assert (await cp.http.delete(f"/v1/sandboxes/{sb}", headers=mh_headers)).status_code == 204

        # A size set through the API outlives an agent restart: the agent comes back with no
        # pool (no flag), reports that, and the CP applies the stored size again.
        assert (await _put(admin, other.host_id, "minimal", 1)).status_code == 200
        await other.astop()
        await other.astart()
        await wait_for(lambda: _reported_target(cp, other, 1), FILL_S, "the restarted agent's pool set again")

        # A host delete terminates the agent, which destroys its pool.
        await wait_for(lambda: _has_ready(admin, pooled.host_id, 1), FILL_S, "pool members to refill")
        r = await admin.req("DELETE", f"/v1/hosts/{pooled.host_id}", params={"force": "true"})
        assert r.status_code == 204, r.text
        assert pooled.proc is not None
        assert await asyncio.to_thread(pooled.proc.wait, 90) == 0
        warm = pooled.data_dir / "warm"
        assert not warm.exists() or list(warm.iterdir()) == []
        with open("/proc/self/mountinfo") as mounts:
            assert [line for line in mounts if str(warm) in line] == []


async def _has_ready(user: User, host_id: str, n: int) -> bool:
    return await _ready(user, host_id) >= n


async def _reported_target(cp: InProcessCP, agent: AgentProcess, n: int) -> bool:
    return any(p["template"] == "minimal" and p["target"] == n for p in await _pools_in_db(cp, agent))


@pytest.mark.root
async def test_a_create_runs_on_its_hosts_runtime_and_claims_its_pool(cp: InProcessCP) -> None:
    """Session 13: an agent linked to the CP defaults to crun where it works and says so; a
    create naming no runtime runs crun there (its row and the agent's crun state say so) and
    claims from the host's default pool; ``runtime=runc`` goes cold until a ``minimal@runc``
    pool is set, then claims from it."""
    admin, user = await cp.signup(admin=True), await cp.signup()
    headers = {"X-API-Key": await user.api_key()}
    async with fleet(cp, "cp-warm-runtimes") as f:
        agent = await f.add(admin, "127.0.0.173")
        host = (await admin.req("GET", f"/v1/hosts/{agent.host_id}")).json()
        assert host["default_runtime"] == "crun" and {"runc", "crun"} <= set(host["runtimes"]), host
        assert (await _put(admin, agent.host_id, "minimal", 1)).status_code == 200
        await wait_for(lambda: _pool_ready(admin, agent.host_id, "minimal", 1), FILL_S, "the crun pool")

        async def create(**body: Any) -> dict[str, Any]:
            r = await cp.http.post("/v1/sandboxes", json=body, headers=headers)
            assert r.status_code == 201, r.text
            got: dict[str, Any] = r.json()
            shown = (await cp.http.get(f"/v1/sandboxes/{got['id']}", headers=headers)).json()
            assert shown["runtime"] == got["runtime"]
            return got

        def claimed(sb_id: str) -> bool:
            return (agent.data_dir / "container-ids" / sb_id).exists()

        def listed_by(runtime: str) -> set[str]:
            out = subprocess.run(
                [runtime, "--root", str(agent.data_dir / runtime), "list", "-q"],
                capture_output=True, text=True, check=True, timeout=60,
            )  # fmt: skip
            return set(out.stdout.split())

        default = await create()
        assert default["runtime"] == "crun" and claimed(default["id"])
        cold = await create(runtime="runc")
        assert cold["runtime"] == "runc" and not claimed(cold["id"])
        assert cold["id"] in listed_by("runc") and cold["id"] not in listed_by("crun")
        assert (await _put(admin, agent.host_id, "minimal@runc", 1)).status_code == 200
        await wait_for(lambda: _pool_ready(admin, agent.host_id, "minimal@runc", 1), FILL_S, "the runc pool")
        warm = await create(runtime="runc")
        assert warm["runtime"] == "runc" and claimed(warm["id"])
        cid = (agent.data_dir / "container-ids" / warm["id"]).read_text().strip()
        assert cid in listed_by("runc") and cid not in listed_by("crun")
        for sb in (default, cold, warm):
            assert (await cp.http.delete(f"/v1/sandboxes/{sb['id']}", headers=headers)).status_code == 204


async def _pool_ready(user: User, host_id: str, name: str, n: int) -> bool:
    pools = (await user.req("GET", f"/v1/hosts/{host_id}")).json().get("warm_pools") or []
    return any(p["template"] == name and p["ready"] >= n for p in pools)
