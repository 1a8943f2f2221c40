"""Issue 4's "Done when", end to end: ONE control plane (in this process, so the test moves its
clock and drives its HostMonitor) and real ``warren agent`` processes on 127.0.0.2-.5, each
registered through the API with a one-time token and serving only over mutual TLS.

Agents A, B, C (127.0.0.2-.4) are regular (platform) hosts; D (127.0.0.5) is a BYOC team's host.
The tests run in file order and share the cluster; the destructive ones come last.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP, User, set_byoc, sql
from tests.harness.multihost import MultiHost, fleet, wait_for
from warren import clock, ids
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.services import host_link
from warren.cp.services.layer_gc import collect
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root (namespaces, cgroups, overlayfs)"),
    pytest.mark.timeout(900),
]


@dataclass
class Cluster(MultiHost):
    """``user`` is a regular team (platform hosts); ``agents`` are A, B, C (regular) and D
    (``owner``'s BYOC team's only host)."""

    admin: User
    owner: User
    byoc_key: str
    a: AgentProcess = field(init=False)
    b: AgentProcess = field(init=False)
    c: AgentProcess = field(init=False)
    d: AgentProcess = field(init=False)

    def __post_init__(self) -> None:
        self.a, self.b, self.c, self.d = self.agents

    @property
    def monitor(self) -> HostMonitor:
        monitor: HostMonitor = self.cp.app.state.monitor
        return monitor

    @property
    def regular(self) -> list[AgentProcess]:
        return [self.a, self.b, self.c]

    @property
    def regular_running(self) -> list[AgentProcess]:
        """The regular agents still serving (a host delete test terminates one)."""
        return [a for a in self.regular if a.proc is not None and a.proc.poll() is None]

    @property
    def everyone(self) -> list[AgentProcess]:
        return list(self.agents)

    async def create(self, key: str | None = None, **body: Any) -> Any:
        return await self.cp.http.post("/v1/sandboxes", json=body, headers={"X-API-Key": key or self.key})

    async def listed(self, agent: AgentProcess) -> dict[str, str]:
        resp = await self.client(agent).stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=10)
        return {s.sandbox_id: s.status for s in resp.sandboxes}

    async def host_of(self) -> dict[str, str]:
        rows = await sql(self.cp, "SELECT id, host_id FROM sandboxes")
        return {ids.sandbox_id(r[0]): ids.host_id(r[1]) for r in rows}

    async def status(self, sandbox_id: str, key: str | None = None) -> str:
        r = await self.api("GET", f"/v1/sandboxes/{sandbox_id}", key=key)
        assert r.status_code == 200, r.text
        return str(r.json()["status"])

    async def host_status(self, agent: AgentProcess) -> str:
        r = await self.admin.req("GET", f"/v1/hosts/{agent.host_id}")
        return str(r.json()["status"]) if r.status_code == 200 else f"http {r.status_code}"

    async def last_beat(self, agent: AgentProcess) -> Any:
        return (await sql(self.cp, "SELECT last_heartbeat_at FROM hosts WHERE id = :id", id=agent.host_uuid))[
            0
        ][0]


async def beaten_since(c: Cluster, agents: list[AgentProcess], since: Any) -> None:
    """Wait until each agent's heartbeat was recorded at or after ``since`` (CP clock)."""

    async def ok() -> bool:
        beats = [await c.last_beat(a) for a in agents]
        return all(b is not None and b >= since for b in beats)

    await wait_for(ok, 60, "fresh heartbeats")


@pytest.fixture(scope="module")
async def cluster(cp: InProcessCP) -> AsyncIterator[Cluster]:
    admin = await cp.signup(admin=True)
    user = await cp.signup()
    owner = await cp.signup()
    await set_byoc(admin, owner.team_id)
    async with fleet(cp, "hosts") as f:
        for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]:
            await f.add(admin, ip)
        await f.add(owner, "127.0.0.5", "byoc", owner.team_id, name="agent-byoc")
        c = Cluster(cp, user, await user.api_key(), f.agents, admin, owner, await owner.api_key())
        for a in f.agents:
            assert await c.host_status(a) == "online"
        yield c


# ------------------------------------------------------------------------------ scheduling


async def test_round_robin_spreads_nine_sandboxes_three_per_host(cluster: Cluster) -> None:
    c = cluster
    made = []
    for _ in range(9):
        r = await c.create()
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "running" and r.json()["id"].startswith("sb-")
        assert "host_id" not in r.json()
        made.append(r.json()["id"])
    placement = await c.host_of()
    per_host = Counter(placement[s] for s in made)
    assert per_host == {a.host_id: 3 for a in c.regular}
    for a in c.regular:  # the agents really run them
        listed = await c.listed(a)
        assert {s for s in made if placement[s] == a.host_id} <= set(listed)
    listing = (await c.api("GET", "/v1/sandboxes")).json()
    assert [s["id"] for s in listing] == list(reversed(made))  # newest first
    await asyncio.gather(*(c.api("DELETE", f"/v1/sandboxes/{s}") for s in made))
    assert (await c.api("GET", "/v1/sandboxes")).json() == []
    assert await c.status(made[0]) == "stopped"
    for a in c.regular:
        assert not set(made) & set(await c.listed(a))


async def test_lifecycle_pause_resume_ping_destroy(cluster: Cluster) -> None:
    c = cluster
    sb = (await c.create(timeout_sec=0)).json()["id"]
    assert (await c.api("POST", f"/v1/sandboxes/{sb}/ping")).status_code == 204
    r = await c.api("POST", f"/v1/sandboxes/{sb}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert (await c.api("POST", f"/v1/sandboxes/{sb}/pause")).json()["error"]["code"] == "invalid_state"
    assert (await c.api("POST", f"/v1/sandboxes/{sb}/ping")).status_code == 409
    r = await c.api("POST", f"/v1/sandboxes/{sb}/resume")
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert (await c.api("POST", f"/v1/sandboxes/{sb}/resume")).status_code == 409
    # Another team sees nothing.
    assert (await c.api("GET", f"/v1/sandboxes/{sb}", key=c.byoc_key)).status_code == 404
    assert (await c.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204
    assert (await c.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204
    assert (await c.api("GET", "/v1/sandboxes/sb-bad")).status_code == 400
    assert (await c.create(template="nope")).status_code == 404
    assert (await c.create(template="../x")).status_code == 400


async def test_byoc_team_lands_only_on_its_host_and_gets_503_when_it_is_down(cluster: Cluster) -> None:
    """Also: SIGSTOP → after 90 s the host is unreachable and its sandboxes missing; SIGCONT →
    online and running again within one monitor pass."""
    c = cluster
    made = []
    for _ in range(3):
        r = await c.create(key=c.byoc_key)
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    placement = await c.host_of()
    assert {placement[s] for s in made} == {c.d.host_id}

    c.d.signal(signal.SIGSTOP)
    try:
        clock.advance(91)
        # The other agents beat every second; wait until their beats carry the moved clock.
        await beaten_since(c, c.regular, clock.now() - timedelta(seconds=1))
        result = await c.monitor.run_once()
        assert result.marked_down == [c.d.host_id]
        assert await c.host_status(c.d) == "unreachable"
        assert [await c.status(s, c.byoc_key) for s in made] == ["missing"] * 3
        for a in c.regular:
            assert await c.host_status(a) == "online"
        r = await c.create(key=c.byoc_key)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available"
        assert len(await c.host_of()) == len(placement)  # no fallback onto a platform host
    finally:
        c.d.signal(signal.SIGCONT)
    await wait_for(lambda: _is(c.host_status(c.d), "online"), 60, "host D back online")
    result = await c.monitor.run_once()
    await c.monitor.settled()  # a BYOC host's check runs beside the pass (docs/hosts.md)
    assert sorted(result.to_running) == sorted(made)
    assert [await c.status(s, c.byoc_key) for s in made] == ["running"] * 3
    r = await c.create(key=c.byoc_key)
    assert r.status_code == 201 and (await c.host_of())[r.json()["id"]] == c.d.host_id
    made.append(r.json()["id"])
    for s in made:
        assert (await c.api("DELETE", f"/v1/sandboxes/{s}", key=c.byoc_key)).status_code == 204


async def _is(aw: Awaitable[str], want: str) -> bool:
    return await aw == want


async def test_sandbox_destroyed_behind_the_cps_back_ends_stopped(cluster: Cluster) -> None:
    c = cluster
    sb = (await c.create()).json()["id"]
    host_id = (await c.host_of())[sb]
    agent = next(a for a in c.regular if a.host_id == host_id)
    await c.pool.get_for(agent.host_uuid, agent.address).stub.DestroySandbox(
        pb.DestroySandboxRequest(sandbox_id=sb), timeout=60
    )
    clock.advance(1)
    result = await c.monitor.run_once()
    assert sb in result.to_stopped
    assert await c.status(sb) == "stopped"


async def test_destroy_error_other_than_not_found_is_502_and_keeps_the_row(cluster: Cluster) -> None:
    c = cluster
    sb = (await c.create()).json()["id"]
    host_id = (await c.host_of())[sb]
    agent = next(a for a in c.regular if a.host_id == host_id)
    await sql(c.cp, "UPDATE hosts SET address = '127.0.0.1:1' WHERE id = :id", id=agent.host_uuid)
    try:
        r = await c.api("DELETE", f"/v1/sandboxes/{sb}")
        assert r.status_code == 502 and r.json()["error"]["code"] == "agent_error"
        assert await c.status(sb) == "running"
    finally:
        await sql(c.cp, "UPDATE hosts SET address = :a WHERE id = :id", a=agent.address, id=agent.host_uuid)
    assert (await c.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204


# ------------------------------------------------------------------------- identity, tokens


async def test_registration_token_works_once(cluster: Cluster) -> None:
    c = cluster
    host_id, token = await c.admin.create_host()
    body = {"token": token, "address": "127.0.0.9:1"}
    assert (await c.cp.http.post("/v1/hosts/register", json=body)).status_code == 201
    assert (await c.cp.http.post("/v1/hosts/register", json=body)).status_code == 401
    assert (await c.admin.req("DELETE", f"/v1/hosts/{host_id}")).status_code == 204


async def test_registration_token_expires_after_an_hour(cluster: Cluster) -> None:
    c = cluster
    host_id, token = await c.admin.create_host()
    clock.advance(3601)
    r = await c.cp.http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.9:1"})
    assert r.status_code == 401
    assert (await c.admin.req("DELETE", f"/v1/hosts/{host_id}")).status_code == 204


async def test_heartbeat_with_another_hosts_token_is_403(cluster: Cluster) -> None:
    c = cluster
    r = await c.cp.http.post(
        f"/v1/hosts/{c.a.host_id}/heartbeat", headers={"X-Host-Token": c.b.credentials()["jwt"]}
    )
    assert r.status_code == 403


async def test_agent_refuses_rpc_without_the_cp_client_certificate(cluster: Cluster) -> None:
    c = cluster
    creds = c.a.credentials()
    attempts = {
        "plaintext": grpc.aio.insecure_channel(c.a.address),
        "tls without client cert": grpc.aio.secure_channel(
            c.a.address,
            grpc.ssl_channel_credentials(creds["ca_cert_pem"].encode()),
            options=[("grpc.ssl_target_name_override", c.a.host_id)],
        ),
        "another host's certificate": grpc.aio.secure_channel(
            c.a.address,
            grpc.ssl_channel_credentials(
                creds["ca_cert_pem"].encode(),
                c.b.credentials()["key_pem"].encode(),
                c.b.credentials()["cert_pem"].encode(),
            ),
            options=[("grpc.ssl_target_name_override", c.a.host_id)],
        ),
    }
    for name, channel in attempts.items():
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.HostAgentStub(channel).ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, name
    # ...while the CP's own client works.
    await c.listed(c.a)


async def test_cp_refuses_an_agent_that_is_not_the_host_it_meant_to_reach(cluster: Cluster) -> None:
    c = cluster
    # Host B's row now points at agent A: A's certificate names host A, so the CP refuses it.
    with pytest.raises(AgentError) as e:
        await c.pool.get_for(c.b.host_uuid, c.a.address).stub.ListSandboxes(
            pb.ListSandboxesRequest(), timeout=5
        )
    assert e.value.rpc_code == "UNAVAILABLE"
    await c.pool.evict(c.b.host_uuid)
    await c.listed(c.b)


# ----------------------------------------------------------------------------- credentials


async def test_refresh_rotation_after_jwt_expiry(cluster: Cluster) -> None:
    c = cluster
    before = {a.host_id: a.credentials() for a in c.everyone}
    clock.advance(7 * 86400 + 60)  # every host JWT has expired
    since = clock.now()
    await beaten_since(c, c.everyone, since)
    for a in c.everyone:
        now = a.credentials()
        assert now["jwt"] != before[a.host_id]["jwt"]
        assert now["refresh_token"] != before[a.host_id]["refresh_token"]
        assert now["cert_pem"] != before[a.host_id]["cert_pem"]
        assert await c.host_status(a) == "online"
        # The old refresh token is revoked.
        r = await c.cp.http.post(
            "/v1/hosts/auth/refresh", json={"refresh_token": before[a.host_id]["refresh_token"]}
        )
        assert r.status_code == 401
    # The hot-swapped certificate is served (new connections) and still passes the identity check.
    for a in c.regular:
        await c.pool.evict(a.host_uuid)
        await c.listed(a)


async def test_crash_between_issue_and_revoke_leaves_the_host_able_to_refresh(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    crashes: list[tuple[Any, Any]] = []  # (the spent token's id, its host's uuid)
    real = host_link._revoke_refresh_token

    async def crash_once(engine: Any, token_id: Any) -> None:
        if not crashes:
            host = await sql(c.cp, "SELECT host_id FROM host_refresh_tokens WHERE id = :id", id=token_id)
            crashes.append((token_id, host[0][0]))
            raise RuntimeError("injected crash between issue and revoke")
        await real(engine, token_id)

    monkeypatch.setattr(host_link, "_revoke_refresh_token", crash_once)
    before = {a.host_id: a.credentials() for a in c.everyone}
    clock.advance(7 * 86400 + 60)  # every JWT expires; the first refresh crashes after issuing
    since = clock.now()
    await beaten_since(c, c.everyone, since)
    assert crashes, "the injected crash never happened"
    spent, host_uuid = crashes[0]
    # Spent tokens are deleted (session 11): the retry that succeeded removed it.
    assert await sql(c.cp, "SELECT 1 FROM host_refresh_tokens WHERE id = :id", id=spent) == []
    crashed_host = ids.host_id(host_uuid)
    agent = next(a for a in c.everyone if a.host_id == crashed_host)
    # It retried with the token that was never revoked, got fresh credentials and kept beating.
    assert agent.credentials()["refresh_token"] != before[crashed_host]["refresh_token"]
    assert await c.host_status(agent) == "online"
    assert "pausing every sandbox" not in agent.log_tail(400)


async def test_revoked_refresh_token_pauses_every_sandbox_and_stops_beating(cluster: Cluster) -> None:
    c = cluster
    made = [(await c.create()).json()["id"] for _ in range(6)]
    placement = await c.host_of()
    on_b = [s for s in made if placement[s] == c.b.host_id]
    assert len(on_b) == 2
    await sql(c.cp, "UPDATE host_refresh_tokens SET revoked_at = now() WHERE host_id = :h", h=c.b.host_uuid)
    clock.advance(7 * 86400 + 60)
    since = clock.now()
    await beaten_since(c, [c.a, c.c, c.d], since)

    async def b_paused() -> bool:
        listed = await c.listed(c.b)
        return all(listed.get(s) == "paused" for s in on_b)

    await wait_for(b_paused, 30, "PauseAll on agent B")
    beat = await c.last_beat(c.b)
    await asyncio.sleep(3)  # three heartbeat intervals
    assert await c.last_beat(c.b) == beat, "agent B kept beating"
    assert "refresh refused" in c.b.log_tail(200)
    # B no longer beats: the monitor takes it for down; its (paused) sandboxes become missing.
    result = await c.monitor.run_once()
    assert c.b.host_id in result.marked_down
    assert [await c.status(s) for s in on_b] == ["missing", "missing"]
    for s in made:
        if s not in on_b:
            assert await c.status(s) == "running"
    for s in made:
        if s not in on_b:
            await c.api("DELETE", f"/v1/sandboxes/{s}")


# ----------------------------------------------------------------------- delete, team delete


async def test_host_delete_without_force_is_409_listing_exactly_the_active_sandboxes(
    cluster: Cluster,
) -> None:
    c = cluster
    made = [(await c.create()).json()["id"] for _ in range(9)]
    placement = await c.host_of()
    on_c = [s for s in made if placement[s] == c.c.host_id]
    assert len(on_c) >= 2
    assert (await c.api("POST", f"/v1/sandboxes/{on_c[0]}/pause")).status_code == 200
    r = await c.admin.req("DELETE", f"/v1/hosts/{c.c.host_id}")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "has_active_sandboxes"
    assert sorted(err["sandbox_ids"]) == sorted(on_c[1:])
    preview = (await c.admin.req("GET", f"/v1/hosts/{c.c.host_id}/delete-preview")).json()
    assert sorted(preview["sandbox_ids"]) == sorted(on_c[1:])

    r = await c.admin.req("DELETE", f"/v1/hosts/{c.c.host_id}?force=true")
    assert r.status_code == 204
    assert await c.c.wait_exit(60) is not None  # Terminate: the agent exits
    for s in on_c:
        assert await c.status(s) == "stopped"
    assert (await c.admin.req("GET", f"/v1/hosts/{c.c.host_id}")).status_code == 404
    tokens = await sql(c.cp, "SELECT count(*) FROM host_refresh_tokens WHERE host_id = :h", h=c.c.host_uuid)
    assert tokens[0][0] == 0
    assert ids.host_id(c.c.host_uuid) not in c.pool._clients
    for s in made:
        if s not in on_c:
            await c.api("DELETE", f"/v1/sandboxes/{s}")


async def test_team_soft_delete_destroys_the_teams_sandboxes_on_their_hosts(cluster: Cluster) -> None:
    c = cluster
    team_user = await c.cp.signup()
    key = await team_user.api_key()
    mine = [(await c.create(key=key)).json()["id"] for _ in range(2)]
    keep = (await c.create()).json()["id"]
    placement = await c.host_of()
    r = await team_user.req("DELETE", f"/v1/teams/{team_user.team_id}")
    assert r.status_code == 204, r.text
    for s in mine:
        agent = next(a for a in (c.a, c.b) if a.host_id == placement[s])
        assert s not in await c.listed(agent)
    rows = await sql(
        c.cp,
        "SELECT status FROM sandboxes WHERE id IN (:x, :y)",
        x=ids.parse_id(ids.Kind.SANDBOX, mine[0]),
        y=ids.parse_id(ids.Kind.SANDBOX, mine[1]),
    )
    assert {r[0] for r in rows} == {"stopped"}
    assert await c.status(keep) == "running"
    await c.api("DELETE", f"/v1/sandboxes/{keep}")


async def test_team_delete_races_a_create_and_removes_snapshot_files(cluster: Cluster) -> None:
    """A create still in flight when its team is deleted must not leave a sandbox running for a
    team nobody can use any more; the team's snapshots go (SPEC §7.3): their rows at once, their
    layers with the next garbage collection, from the store and from the host."""
    c = cluster
    team_user = await c.cp.signup()
    key = await team_user.api_key()
    team_uuid = ids.parse_id(ids.Kind.TEAM, team_user.team_id)
    first = (await c.create(key=key)).json()["id"]
    r = await c.api("POST", "/v1/snapshots", key=key, json={"sandbox_id": first, "name": "before-delete"})
    assert r.status_code == 201, r.text
    ((layers,),) = await sql(c.cp, "SELECT layers FROM templates WHERE team_id = :t", t=team_uuid)
    layer = layers[-1]
    store = c.cp.app.state.store
    assert await store.exists(layer)

    for a in c.regular_running:  # the next create reaches its agent only when the agents run again
        a.signal(signal.SIGSTOP)
    try:
        creating = asyncio.create_task(c.create(key=key))

        async def pending() -> bool:
            q = "SELECT count(*) FROM sandboxes WHERE team_id = :t AND status = 'pending'"
            return bool((await sql(c.cp, q, t=team_uuid))[0][0])

        await wait_for(pending, 60, "the create's pending row")
        deleting = asyncio.create_task(team_user.req("DELETE", f"/v1/teams/{team_user.team_id}"))
        await asyncio.sleep(0.5)
    finally:
        for a in c.regular_running:
            a.signal(signal.SIGCONT)
    assert (await deleting).status_code == 204
    r = await creating
    # Depending on which came first it answers 201 (then the delete stopped it) or 403 no_team.
    assert r.status_code in (201, 403), r.text

    rows = await sql(c.cp, "SELECT id, status FROM sandboxes WHERE team_id = :t", t=team_uuid)
    assert {status for _, status in rows} == {"stopped"}, rows
    team_sandboxes = {ids.sandbox_id(u) for u, _ in rows}

    async def none_left() -> bool:
        on_hosts = set().union(*[set(await c.listed(a)) for a in c.regular_running])
        return not (on_hosts & team_sandboxes)

    await wait_for(none_left, 30, "the team's sandboxes to leave their hosts")
    assert not await sql(c.cp, "SELECT 1 FROM templates WHERE team_id = :t", t=team_uuid)
    report = await collect(c.cp.engine, store, c.pool, grace_s=0)
    assert layer in report.store_deleted and not await store.exists(layer)
    for a in c.regular_running:
        listed = await c.pool.get_for(a.host_uuid, a.address).stub.ListLayers(
            pb.ListLayersRequest(), timeout=30
        )
        assert layer not in [x.digest for x in listed.layers]


async def test_snapshot_overwrite_and_delete_need_no_other_host(cluster: Cluster) -> None:
    """A snapshot is a layer in the template store: overwriting or deleting it asks no host for
    anything, so a host that is down (online in the database, answering nothing) cannot make
    either fail or hang; a sandbox of it starts on the host that holds its layer."""
    c = cluster
    sb = (await c.create()).json()["id"]
    r = await c.api("POST", "/v1/snapshots", json={"sandbox_id": sb, "name": "overwritten"})
    assert r.status_code == 201, r.text
    q = "SELECT host_id, layers FROM templates WHERE name = 'overwritten'"
    ((holder_id, old_layers),) = await sql(c.cp, q)
    holder = next(a for a in c.regular_running if a.host_uuid == holder_id)
    other = next(a for a in c.regular_running if a is not holder)
    assert (await c.api("POST", f"/v1/sandboxes/{sb}/resume")).status_code == 200
    r = await c.api("POST", f"/v1/sandboxes/{sb}/exec", json={"cmd": "touch", "args": ["/root/changed"]})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    other.signal(signal.SIGSTOP)  # online in the database, answering nothing
    try:
        r = await c.api(
            "POST", "/v1/snapshots?overwrite=true", json={"sandbox_id": sb, "name": "overwritten"}, timeout=30
        )
        assert r.status_code == 201, r.text
        ((_, new_layers),) = await sql(c.cp, q)
        assert new_layers != old_layers
        made = await c.create(template="overwritten")
        assert made.status_code == 201, made.text
        assert (await c.host_of())[made.json()["id"]] == holder.host_id
        assert (await c.api("DELETE", "/v1/snapshots/overwritten", timeout=30)).status_code == 204
    finally:
        other.signal(signal.SIGCONT)
    for s in (sb, made.json()["id"]):
        await c.api("DELETE", f"/v1/sandboxes/{s}")


async def test_two_control_planes_on_one_database_never_double_transition(
    cluster: Cluster, db_url: str, tmp_path: Path
) -> None:
    c = cluster
    second = await InProcessCP(
        db_url,
        tmp_path / "cp2",
        ca_cert=c.cp.settings.home / "ca" / "ca.pem",
        ca_key=c.cp.settings.home / "ca" / "ca.key",
    ).start()
    try:
        made = [(await c.create()).json()["id"] for _ in range(4)]
        placement = await c.host_of()
        on_a = [s for s in made if placement[s] == c.a.host_id]
        assert on_a
        # Behind the CP's back: one destroyed, the rest paused by PauseAll (reported auto-paused).
        client = c.pool.get_for(c.a.host_uuid, c.a.address)
        await client.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=on_a[0]), timeout=60)
        await client.stub.PauseAll(pb.PauseAllRequest(), timeout=60)
        clock.advance(1)
        m1: HostMonitor = c.cp.app.state.monitor
        m2: HostMonitor = second.app.state.monitor
        audits_before = (await sql(c.cp, "SELECT count(*) FROM audit_logs WHERE action = 'pause'"))[0][0]
        await asyncio.gather(m1.run_once(), m2.run_once(), m1.run_once(), m2.run_once())
        assert await c.status(on_a[0]) == "stopped"
        for s in on_a[1:]:
            assert await c.status(s) == "paused"
        audits = (await sql(c.cp, "SELECT count(*) FROM audit_logs WHERE action = 'pause'"))[0][0]
        assert audits - audits_before == len(on_a) - 1

        # Host D goes silent; both replicas' monitors race to mark it down: one transition.
        q = "SELECT count(*) FROM audit_logs WHERE action = 'marked_down' AND resource_id = :h"
        downs_before = (await sql(c.cp, q, h=c.d.host_id))[0][0]
        c.d.signal(signal.SIGSTOP)
        try:
            clock.advance(91)
            await beaten_since(c, [c.a], clock.now() - timedelta(seconds=1))
            r1, r2 = await asyncio.gather(m1.run_once(), m2.run_once())
            assert r1.marked_down + r2.marked_down == [c.d.host_id]
            assert (await sql(c.cp, q, h=c.d.host_id))[0][0] == downs_before + 1
        finally:
            c.d.signal(signal.SIGCONT)
        await wait_for(lambda: _is(c.host_status(c.d), "online"), 60, "host D back online")
        for s in made:
            await c.api("DELETE", f"/v1/sandboxes/{s}")
    finally:
        await second.stop()
