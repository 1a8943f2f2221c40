"""D5 and D12: limits a tenant cannot choose past, as a tenant would try to get past them.

- per-sandbox maxima (vCPUs, memory, disk, inactivity timeout): a create past one is a 400
  naming the maximum, never a sandbox;
- per-team quotas (concurrent sandboxes, total vCPUs and memory, snapshot count and bytes):
  429 ``quota_exceeded``, also for creates fired in parallel;
- only a platform admin changes quotas; a team reads its own usage;
- capacity-aware scheduling: a full host gets no more sandboxes (503 ``no_capacity``, or the
  sandbox lands on another host), also for parallel creates racing for its last slot.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.tenant import Tenant, signup
from warren import ids
from warren.footprint import footprint_mb

pytestmark = pytest.mark.root

ACTIVE = "('pending', 'starting', 'running', 'paused', 'missing')"
# A 256 MiB sandbox on the host's default runtime (runc or crun here) in its host's capacity.
SMALL_FOOTPRINT = footprint_mb(256, "runc")


def team_uuid(t: Tenant) -> uuid.UUID:
    return ids.parse_id(ids.Kind.TEAM, t.team_id)


def admin(platform: Any, method: str, path: str, json: Any = None) -> httpx.Response:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        return c.request(method, path, json=json)


def set_quotas(platform: Any, t: Tenant, **quotas: int | None) -> dict[str, Any]:
    r = admin(platform, "PUT", f"/v1/admin/teams/{t.team_id}/quotas", quotas)
    assert r.status_code == 200, r.text
    return dict(r.json())


def quota_error(r: httpx.Response, quota: str) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    err = dict(r.json()["error"])
    assert err["code"] == "quota_exceeded" and err["quota"] == quota, err
    assert "Retry-After" not in r.headers  # waiting does not help
    return err


async def parallel_creates(t: Tenant, n: int, **body: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=t.url, headers={"X-API-Key": t.api_key}, timeout=120) as c:
        return list(
            await asyncio.gather(
                *(c.post("/v1/sandboxes", json={"template": "minimal", **body}) for _ in range(n))
            )
        )


def destroy_all(t: Tenant) -> None:
    for sb in t.w("GET", "/v1/sandboxes").json():
        assert t.w("DELETE", f"/v1/sandboxes/{sb['id']}").status_code == 204


# ------------------------------------------------------------------------- per-sandbox maxima


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"memory_mb": 262144, "vcpus": 64}, "maximum of 8"),  # the D5 reproduction
        ({"vcpus": 9}, "maximum of 8"),
        ({"memory_mb": 16385}, "maximum of 16384 MiB"),
        ({"disk_size_mb": 1 << 20}, "maximum of 20480 MiB"),
        ({"timeout_sec": 86401}, "maximum of 86400 s"),
    ],
)
def test_a_tenant_cannot_choose_limits_past_the_platform_maxima(
    alice: Tenant, body: dict[str, int], named: str
) -> None:
    r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", **body})
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]
    assert alice.w("GET", "/v1/sandboxes").json() == []


def test_a_sandbox_gets_the_sizes_it_asked_for_within_the_maxima(alice: Tenant) -> None:
    r = alice.w(
        "POST", "/v1/sandboxes", {"template": "minimal", "vcpus": 2, "memory_mb": 256, "disk_size_mb": 64}
    )
    assert r.status_code == 201, r.text
    sb = r.json()
    assert (sb["vcpus"], sb["memory_mb"], sb["timeout_sec"]) == (2, 256, 86400)
    # The agent may make the disk smaller (it must fit the memory limit); never larger.
    assert 0 < sb["disk_size_mb"] <= 64
    cg = Path(f"/sys/fs/cgroup/memory/warren/{sb['id']}/memory.limit_in_bytes")
    if cg.exists():  # cgroup v1 hosts (v2 hosts name the file memory.max)
        assert int(cg.read_text()) == 256 << 20
    destroy_all(alice)


async def test_an_admin_lowered_maximum_holds_and_a_tenant_cannot_change_it(
    platform: Any, alice: Tenant
) -> None:
    assert alice.w("PUT", "/v1/admin/limits", {"max_vcpus": 64}).status_code == 401  # API key
    with httpx.Client(base_url=alice.url, headers={"Authorization": f"Bearer {alice.token}"}) as c:
        assert c.put("/v1/admin/limits", json={"max_vcpus": 64}).status_code == 403
        assert c.get("/v1/admin/limits").status_code == 403
    r = admin(platform, "PUT", "/v1/admin/limits", {"max_vcpus": 2})
    assert r.status_code == 200 and r.json()["max_vcpus"] == 2, r.text
    try:
        r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "vcpus": 3})
        assert r.status_code == 400 and "maximum of 2" in r.json()["error"]["message"], r.text
    finally:
        r = admin(platform, "PUT", "/v1/admin/limits", {"max_vcpus": None})  # back to the default
        assert r.status_code == 200 and r.json()["max_vcpus"] == 8, r.text
    assert admin(platform, "PUT", "/v1/admin/limits", {"max_vcpus": 0}).status_code == 400
    assert admin(platform, "PUT", "/v1/admin/limits", {"max_cpus": 1}).status_code == 400


# ------------------------------------------------------------------------------- team quotas


def test_a_team_at_its_quota_gets_429_and_can_create_again_after_a_destroy(platform: Any) -> None:
    t = signup(platform.url, "quota")
    report = set_quotas(platform, t, sandboxes=2)
    assert report["quotas"]["sandboxes"] == 2 and report["overrides"]["sandboxes"] == 2
    first, _second = t.create(), t.create()
    err = quota_error(t.w("POST", "/v1/sandboxes", {"template": "minimal"}), "sandboxes")
    assert "quota is 2" in err["message"] and "2 in use" in err["message"], err
    assert (err["limit"], err["in_use"]) == (2, 2)
    # A paused sandbox still holds its memory: it still counts.
    assert t.w("POST", f"/v1/sandboxes/{first}/pause").status_code == 200
    quota_error(t.w("POST", "/v1/sandboxes", {"template": "minimal"}), "sandboxes")
    assert t.w("DELETE", f"/v1/sandboxes/{first}").status_code == 204
    t.create()
    destroy_all(t)


def test_vcpu_and_memory_quotas_count_the_sizes_not_the_sandboxes(platform: Any) -> None:
    t = signup(platform.url, "sizes")
    set_quotas(platform, t, vcpus=3, memory_mb=768)
    t.create(vcpus=2, memory_mb=256)
    err = quota_error(
        t.w("POST", "/v1/sandboxes", {"template": "minimal", "vcpus": 2, "memory_mb": 128}), "vcpus"
    )
    assert "quota is 3" in err["message"]
    quota_error(
        t.w("POST", "/v1/sandboxes", {"template": "minimal", "vcpus": 1, "memory_mb": 768}), "memory_mb"
    )
    t.create(vcpus=1, memory_mb=512)  # exactly at both quotas
    destroy_all(t)


async def test_parallel_creates_cannot_get_past_the_quota(platform: Any) -> None:
    t = signup(platform.url, "racer")
    set_quotas(platform, t, sandboxes=3)
    t.create()  # at quota - 2
    rs = await parallel_creates(t, 6, memory_mb=128)
    assert sorted(r.status_code for r in rs) == [201, 201, 429, 429, 429, 429], [r.text for r in rs]
    n = await platform.sql(
        f"SELECT count(*) FROM sandboxes WHERE status IN {ACTIVE} AND team_id = :t", t=team_uuid(t)
    )
    assert n[0][0] == 3
    destroy_all(t)


def test_only_a_platform_admin_changes_quotas_and_a_team_reads_its_own(
    platform: Any, alice: Tenant, bob: Tenant
) -> None:
    body = {"sandboxes": 1000, "vcpus": 1000, "memory_mb": 10_000_000}
    assert alice.w("PUT", f"/v1/admin/teams/{alice.team_id}/quotas", body).status_code == 401
    with httpx.Client(base_url=alice.url, headers={"Authorization": f"Bearer {alice.token}"}) as c:
        # The owner of the team is no platform admin.
        assert c.put(f"/v1/admin/teams/{alice.team_id}/quotas", json=body).status_code == 403
        assert c.get(f"/v1/admin/teams/{bob.team_id}/quotas").status_code == 403
        mine = c.get(f"/v1/teams/{alice.team_id}/quotas")
        assert mine.status_code == 200, mine.text
        assert c.get(f"/v1/teams/{bob.team_id}/quotas").status_code == 403
    assert mine.json()["quotas"] == {
        "sandboxes": 20, "vcpus": 40, "memory_mb": 40960, "snapshots": 20, "snapshot_mb": 20480,
        "store_mb": 40960,
    }  # fmt: skip
    # An API key reads its own team's, and no other.
    r = alice.w("GET", f"/v1/teams/{alice.team_id}/quotas")
    assert r.status_code == 200 and r.json()["sandbox_maxima"]["vcpus"] == 8, r.text
    assert alice.w("GET", f"/v1/teams/{bob.team_id}/quotas").status_code == 403


def test_an_admin_raises_a_team_quota_and_the_team_goes_further(platform: Any) -> None:
    t = signup(platform.url, "grower")
    set_quotas(platform, t, sandboxes=1)
    t.create()
    quota_error(t.w("POST", "/v1/sandboxes", {"template": "minimal"}), "sandboxes")
    set_quotas(platform, t, sandboxes=2)
    t.create()
    usage = t.w("GET", f"/v1/teams/{t.team_id}/quotas").json()["usage"]
    assert (usage["sandboxes"], usage["vcpus"], usage["memory_mb"]) == (2, 2, 1024)
    # Back to the platform default (20).
    assert set_quotas(platform, t, sandboxes=None)["quotas"]["sandboxes"] == 20
    assert admin(platform, "PUT", f"/v1/admin/teams/{t.team_id}/quotas", {"sandboxes": -1}).status_code == 400
    destroy_all(t)


# ----------------------------------------------------------------------------- D12 snapshots


def test_snapshot_count_quota(platform: Any) -> None:
    t = signup(platform.url, "snaps")
    set_quotas(platform, t, snapshots=1)
    sb = t.create()
    r = t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "one"})
    assert r.status_code == 201, r.text
    quota_error(t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "two"}), "snapshots")
    # Overwriting the one it has is no extra snapshot.
    assert t.w("POST", "/v1/snapshots?overwrite=true", {"sandbox_id": sb, "name": "one"}).status_code == 201
    assert [s["name"] for s in t.w("GET", "/v1/snapshots?type=snapshot").json()] == ["one"]
    destroy_all(t)


async def test_a_snapshot_past_the_bytes_quota_is_refused_and_stores_nothing(platform: Any) -> None:
    t = signup(platform.url, "bigsnap")
    set_quotas(platform, t, snapshot_mb=1)
    sb = t.create()
    t.sh(sb, "head -c 3000000 /dev/urandom > /root/blob")
    stored = platform.cp.home / "store" / "layers" / "sha256"
    before = set(stored.iterdir()) if stored.exists() else set()
    quota_error(t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "big"}), "snapshot_mb")
    assert t.w("GET", "/v1/snapshots?type=snapshot").json() == []
    # The export was stopped at the quota: no layer reached the template store.
    assert (set(stored.iterdir()) if stored.exists() else set()) == before
    # A refused snapshot leaves the sandbox running, as it was.
    assert t.w("GET", f"/v1/sandboxes/{sb}").json()["status"] == "running"
    # At the quota (0 bytes left), a snapshot is refused before anything starts.
    set_quotas(platform, t, snapshot_mb=0)
    t.sh(sb, "rm /root/blob")
    quota_error(t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "small"}), "snapshot_mb")
    assert t.w("GET", f"/v1/sandboxes/{sb}").json()["status"] == "running"  # never paused
    destroy_all(t)


# ---------------------------------------------------------------------------------- capacity


async def _leave_room(platform: Any, host_id: str, memory_mb: int) -> None:
    """Make the host report just ``memory_mb`` more than its sandboxes already reserve (at their
    footprints, migration 0021: ``warren_host_usage``, what the scheduler counts)."""
    await platform.sql(
        f"UPDATE hosts SET memory_mb = {memory_mb} + (SELECT u.memory_mb FROM warren_host_usage(hosts.id) u) "
        "WHERE id = :h",
        h=host_id,
    )


async def test_a_full_host_gets_no_more_sandboxes(platform: Any) -> None:
    t = signup(platform.url, "filler")
    host = (await platform.sql("SELECT id, memory_mb FROM hosts WHERE status = 'online'"))[0]
    try:
        await _leave_room(platform, host[0], 2 * SMALL_FOOTPRINT)  # two 256 MiB sandboxes
        t.create(memory_mb=256)
        t.create(memory_mb=256)
        r = t.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 256})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity", r.text
        # A smaller one, or the same after a destroy, fits.
        destroy_all(t)
        # The race for the last slot: of four parallel creates exactly one gets it.
        await _leave_room(platform, host[0], SMALL_FOOTPRINT)
        rs = await parallel_creates(t, 4, memory_mb=256)
        codes = sorted(r.status_code for r in rs)
        assert codes == [201, 503, 503, 503], [r.text for r in rs]
        assert all(r.json()["error"]["code"] == "no_capacity" for r in rs if r.status_code == 503)
    finally:
        await platform.sql("UPDATE hosts SET memory_mb = :m WHERE id = :h", m=host[1], h=host[0])
    destroy_all(t)


async def test_a_full_host_sends_the_sandbox_to_another_host(platform: Any) -> None:
    t = signup(platform.url, "spill")
    first = (await platform.sql("SELECT id, memory_mb FROM hosts WHERE status = 'online'"))[0]
    await platform.add_agent("127.0.0.22", platform.cp.home.parent / "agent-spill")
    second = (await platform.sql("SELECT id FROM hosts WHERE status = 'online' AND id <> :h", h=first[0]))[0][
        0
    ]
    try:
        await _leave_room(platform, first[0], 64)  # the first host is full for 128 MiB
        made = [ids.parse_id(ids.Kind.SANDBOX, t.create(memory_mb=128)) for _ in range(3)]
        rows = await platform.sql("SELECT DISTINCT host_id FROM sandboxes WHERE id = ANY(:ids)", ids=made)
        assert [r[0] for r in rows] == [second]
    finally:
        await platform.sql("UPDATE hosts SET memory_mb = :m WHERE id = :h", m=first[1], h=first[0])
    destroy_all(t)


async def test_a_snapshot_needs_disk_room_on_its_host(platform: Any) -> None:
    """Each snapshot is a full copy on its host's disk (D12): a host whose disk cannot hold one
    more copy of the sandbox's disk refuses the snapshot before it starts."""
    t = signup(platform.url, "diskroom")
    sb = t.create(memory_mb=2048, disk_size_mb=2048)
    disk_mb = t.w("GET", f"/v1/sandboxes/{sb}").json()["disk_size_mb"]
    where = "FROM hosts h JOIN sandboxes s ON s.host_id = h.id WHERE s.id = :s"
    host = (await platform.sql(f"SELECT h.id, h.disk_gb {where}", s=ids.parse_id(ids.Kind.SANDBOX, sb)))[0]
    if disk_mb <= 1024:
        pytest.fail(f"the agent gave a 2 GiB sandbox only {disk_mb} MiB of disk")
    try:
        await platform.sql("UPDATE hosts SET disk_gb = 1 WHERE id = :h", h=host[0])
        r = t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "nodisk"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity", r.text
        assert t.w("GET", f"/v1/sandboxes/{sb}").json()["status"] == "running"
    finally:
        await platform.sql("UPDATE hosts SET disk_gb = :d WHERE id = :h", d=host[1], h=host[0])
    destroy_all(t)
