"""Session 12's attack on the control plane from a hostile BYOC host: mallory's own machine,
registered to her BYOC team, runs an "agent" that answers the CP's calls with whatever she
likes (a scripted servicer served over the host's real mTLS credentials, as her modified
``warren agent`` would). The CP's own code (its API, its host monitor and its layer collector,
run here in-process on the platform's database with the CP's CA) is the victim.

Found and fixed:

* a host registered at the address ``host-<another host's id>:port`` was issued a certificate
  in that host's name, which the CP accepts as that host wherever it dials it;
* the sandbox address an agent answers a create, a resume or a listing with was stored as sent
  (a MiB of text, or none of an address, on the sandbox's row and in every answer about it),
  and its disk size too (negative, or larger than asked);
* the CP took any agent answer up to 128 MiB: four unary execs on her sandbox, each answered
  with one 100 MiB output message, raised the CP's peak memory by 648 MiB before the 413s;
* one host's ``ListLayers`` of 12 000 digests made every layer collection fail for the whole
  platform (one INSERT past PostgreSQL's 32 767 parameters);
* a ``ListSandboxes`` answer of 100 000 sandboxes was taken apart on the CP's event loop;
* hosts that never answer ``ListSandboxes`` held every monitor pass to its RPC deadline, so
  with a team's worth of them (1000 a team) the platform's hosts were checked once an hour;
* E2B's ListDir asked an agent that always answered "more" for pages without end;
* a pause stored every metric point an agent answered (6000 made-up timestamps a pause);
* a create on a host registered at an address of the CP's own network answered why the CP's
  connection failed there (refused, not TLS, closed, a certificate): a port scanner.
* credential refreshes were not counted: one client chaining them took a CP core (~8 ms each).

What held is asserted too: a host's listing of another team's sandbox ids changes none of
their rows, a host certificate cannot call another agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.cp import JWT_SECRET
from tests.harness.fake_agent import serve_fake_agent
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from warren import ids
from warren.agent.control_plane import load_credentials
from warren.cp.db.engine import make_engine
from warren.cp.hosts import monitor as monitor_mod
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.monitor import HostMonitor, PassResult
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services import audit, envd_fs, host_link, layer_gc
from warren.cp.services.envd_tokens import envd_access_token
from warren.cp.store.directory import DirectoryStore
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.root

MiB = 1 << 20


# ------------------------------------------------------------------ mallory's hostile agent


@dataclass
class Script:
    """What mallory's agent answers; tests change it between calls."""

    host_ip: str = "10.11.0.2"
    disk_size_mb: int = 0
    listed: list[pb.SandboxInfo] = field(default_factory=list)
    auto_paused: list[str] = field(default_factory=list)
    creating: list[str] = field(default_factory=list)
    ended: list[pb.SandboxEgress] = field(default_factory=list)
    layers: list[pb.LayerInfo] = field(default_factory=list)
    exec_output: bytes = b""
    hang_listing: bool = False
    dir_pages: str = ""  # ListDir: "empty" (more, no entries) or "one" (more, one entry a page)
    dir_calls: int = 0
    metric_points: list[pb.MetricPoint] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    listing_held: int = 0  # ListSandboxes calls being held right now


class HostileAgent(pb_grpc.HostAgentServicer):
    def __init__(self, script: Script) -> None:
        self.s = script
        self.made: set[str] = set()

    async def CreateSandbox(self, request: Any, context: Any) -> pb.CreateSandboxResponse:
        self.made.add(request.sandbox_id)
        return pb.CreateSandboxResponse(
            sandbox_id=request.sandbox_id, status="running", host_ip=self.s.host_ip,
            disk_size_mb=self.s.disk_size_mb,
        )  # fmt: skip

    async def DestroySandbox(self, request: Any, context: Any) -> pb.DestroySandboxResponse:
        self.made.discard(request.sandbox_id)
        return pb.DestroySandboxResponse()

    async def PauseSandbox(self, request: Any, context: Any) -> pb.PauseSandboxResponse:
        return pb.PauseSandboxResponse(paused_state="memory")

    async def ResumeSandbox(self, request: Any, context: Any) -> pb.ResumeSandboxResponse:
        return pb.ResumeSandboxResponse(
            sandbox_id=request.sandbox_id, status="running", host_ip=self.s.host_ip
        )

    async def ListSandboxes(self, request: Any, context: Any) -> pb.ListSandboxesResponse:
        if self.s.hang_listing:
            self.s.listing_held += 1
            try:
                await self.s.release.wait()
            finally:
                self.s.listing_held -= 1
        own = [pb.SandboxInfo(sandbox_id=sid, status="running", host_ip=self.s.host_ip) for sid in self.made]
        return pb.ListSandboxesResponse(
            sandboxes=own + self.s.listed, auto_paused_sandbox_ids=self.s.auto_paused,
            creating_sandbox_ids=self.s.creating, reports_creating=True, ended_egress=self.s.ended,
        )  # fmt: skip

    async def ListDir(self, request: Any, context: Any) -> pb.ListDirResponse:
        self.s.dir_calls += 1
        n = self.s.dir_calls
        one = [pb.EntryInfo(name=f"f{n}", path=f"/f{n}", type="file")]
        entries = one if self.s.dir_pages == "one" else []
        return pb.ListDirResponse(entries=entries, has_more=True, next_cursor=f"f{n}")

    async def GetSandboxMetrics(self, request: Any, context: Any) -> pb.GetSandboxMetricsResponse:
        return pb.GetSandboxMetricsResponse(points=self.s.metric_points)

    async def ListLayers(self, request: Any, context: Any) -> pb.ListLayersResponse:
        return pb.ListLayersResponse(layers=self.s.layers)

    async def DeleteLayers(self, request: Any, context: Any) -> pb.DeleteLayersResponse:
        return pb.DeleteLayersResponse()

    async def ExecStream(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ExecEvent]:
        async for _ in request_iterator:
            break  # the start
        yield pb.ExecEvent(stdout=self.s.exec_output)
        yield pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=0))


@dataclass
class RogueHost:
    url: str
    host_id: str
    server: grpc.aio.Server
    script: Script
    agent: HostileAgent
    data_dir: Path

    async def beat(self) -> None:
        """A heartbeat, so the monitor (stale after 90 s) keeps the host online."""
        creds = load_credentials(self.data_dir)
        assert creds is not None
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as c:
            r = await c.post(
                f"/v1/hosts/{self.host_id}/heartbeat", json={"runtimes": ["runc"]},
                headers={"X-Host-Token": creds.jwt},
            )  # fmt: skip
        assert r.status_code in (204, 429), r.text


def _jwt(t: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.token}"}


async def _rogue_host(platform: Platform, mallory: Tenant, data_dir: Path) -> RogueHost:
    """A BYOC host of mallory's, registered and served by her hostile agent; beats once."""
    async with httpx.AsyncClient(base_url=platform.url, timeout=60) as c:
        r = await c.post(
            "/v1/hosts", json={"type": "byoc", "team_id": mallory.team_id}, headers=_jwt(mallory)
        )
        assert r.status_code == 201, r.text
        host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
        script = Script()
        agent = HostileAgent(script)
        data_dir.mkdir(parents=True, exist_ok=True)
        server, _ = await serve_fake_agent(agent, platform.url, token, data_dir)
    host = RogueHost(platform.url, host_id, server, script, agent, data_dir)
    await host.beat()
    return host


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    """A platform of this module's own (it adds hosts), whose CP's monitor makes its first pass
    at start and no other: the passes that meet mallory's hosts are the tests' own."""
    async with running_platform(db_url, platform_dir, env={"WARREN_MONITOR_INTERVAL_S": "3600"}) as p:
        yield p


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    t = signup(platform.url, "mallory")
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        r = c.put(f"/v1/admin/teams/{t.team_id}/byoc", json={"enabled": True})
        assert r.status_code == 204, r.text
    return t


@pytest.fixture(scope="module")
def alice(platform: Platform) -> Tenant:
    return signup(platform.url, "alice")


@pytest.fixture(scope="module")
async def rogue(platform: Platform, mallory: Tenant, tmp_path_factory: pytest.TempPathFactory) -> Any:
    host = await _rogue_host(platform, mallory, tmp_path_factory.mktemp("rogue"))
    yield host
    await host.server.stop(0)


@contextlib.asynccontextmanager
async def cp_side(platform: Platform) -> AsyncIterator[tuple[AsyncEngine, HostClientPool]]:
    """The CP's own database engine and agent client pool (its CA), in this process."""
    engine = make_engine(platform.cp.db_url, pool_size=10)
    pool = HostClientPool(CertificateAuthority.load_or_create(platform.cp.home / "ca"))
    try:
        yield engine, pool
    finally:
        await pool.close()
        await engine.dispose()


async def monitor_pass(monitor: HostMonitor, *hosts: RogueHost) -> PassResult:
    """One pass of the CP's monitor, the BYOC hosts' checks it leaves running included."""
    for h in hosts:
        await h.beat()
    result = await monitor.run_once()
    await monitor.settled()
    return result


async def _api(t: Tenant, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=t.url, headers={"X-API-Key": t.api_key}, timeout=120) as c:
        return await c.request(method, path, json=body)


async def _row(platform: Platform, sid: str) -> dict[str, Any]:
    rows = await platform.sql(
        "SELECT status, host_ip, disk_size_mb, egress_bytes, paused_state FROM sandboxes WHERE id = :i",
        i=ids.parse_id(ids.Kind.SANDBOX, sid),
    )
    return dict(rows[0]._mapping)


# ------------------------------------------------------------------ what the CP stores


JUNK_ADDRESSES = ["x" * MiB, "10.0.0.1; DROP TABLE sandboxes", "999.1.1.1", "10.0.0.1\x00", "host.example"]


async def test_a_hosts_create_and_resume_answers_store_no_junk_address_or_disk(
    platform: Platform, mallory: Tenant, rogue: RogueHost
) -> None:
    """A create answered with a MiB-long "address" (or none at all) and a negative or oversized
    disk: the row keeps no address and the disk the create asked for; the same for a resume. A
    real address is stored as the agent said it."""
    for junk, disk in zip(JUNK_ADDRESSES, [-5, 2**31 - 1, 0, -(2**31), 99999], strict=True):
        rogue.script.host_ip, rogue.script.disk_size_mb = junk, disk
        r = await _api(mallory, "POST", "/v1/sandboxes", {"template": "minimal", "disk_size_mb": 256})
        assert r.status_code == 201, r.text[:300]
        sid = r.json()["id"]
        got = await _api(mallory, "GET", f"/v1/sandboxes/{sid}")
        assert got.status_code == 200 and len(got.content) < 64 * 1024, got.text[:300]
        assert got.json().get("host_ip") is None, got.text[:300]
        row = await _row(platform, sid)
        assert row["host_ip"] == "" and row["disk_size_mb"] == 256, (junk[:20], disk, row)
        assert (await _api(mallory, "POST", f"/v1/sandboxes/{sid}/pause")).status_code == 200
        r = await _api(mallory, "POST", f"/v1/sandboxes/{sid}/resume")
        assert r.status_code == 200, r.text[:300]
        assert (await _row(platform, sid))["host_ip"] == ""
        assert (await _api(mallory, "DELETE", f"/v1/sandboxes/{sid}")).status_code == 204
    rogue.script.host_ip, rogue.script.disk_size_mb = "10.11.0.7", 200
    r = await _api(mallory, "POST", "/v1/sandboxes", {"template": "minimal", "disk_size_mb": 256})
    assert r.status_code == 201, r.text[:300]
    assert (r.json()["host_ip"], r.json()["disk_size_mb"]) == ("10.11.0.7", 200)
    assert (await _api(mallory, "DELETE", f"/v1/sandboxes/{r.json()['id']}")).status_code == 204


async def test_a_hosts_listing_sets_no_junk_address_on_an_abandoned_create(
    platform: Platform, mallory: Tenant, rogue: RogueHost
) -> None:
    """The monitor settles a dead replica's create the host did make with the address the
    listing gives: a junk one is not stored."""
    rogue.script.host_ip = "10.11.0.3"
    r = await _api(mallory, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        # As a create whose replica died before it recorded the answer left it.
        await platform.sql(
            "UPDATE sandboxes SET status = 'pending', host_ip = '', replica_id = :r,"
            " last_updated = now() - interval '1 hour' WHERE id = :i",
            r=uuid.uuid4(), i=ids.parse_id(ids.Kind.SANDBOX, sid),
        )  # fmt: skip
        rogue.script.host_ip = "y" * MiB
        async with cp_side(platform) as (engine, pool):
            result = await monitor_pass(HostMonitor(engine, pool, audit.record), rogue)  # type: ignore[arg-type]
        assert sid in result.to_running, result
        row = await _row(platform, sid)
        assert row["status"] == "running" and row["host_ip"] == "", row
    finally:
        await _api(mallory, "DELETE", f"/v1/sandboxes/{sid}")


# ------------------------------------------------------------------ another team's rows


async def test_a_hosts_listing_of_another_teams_sandboxes_changes_none_of_them(
    platform: Platform, alice: Tenant, rogue: RogueHost
) -> None:
    """mallory's agent lists alice's sandbox (on the platform's host) as paused, auto-paused,
    being created, with egress readings, and alice's destroyed one as running: alice's rows do
    not move and nothing is destroyed on her host (held)."""
    r = await _api(alice, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    live = r.json()["id"]
    r = await _api(alice, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    gone = r.json()["id"]
    assert (await _api(alice, "DELETE", f"/v1/sandboxes/{gone}")).status_code == 204
    before = await _row(platform, live)
    rogue.script.listed = [
        pb.SandboxInfo(
            sandbox_id=live, status="paused", paused_state="disk", host_ip="6.6.6.6", egress_bytes=2**40
        ),
        pb.SandboxInfo(sandbox_id=gone, status="running", egress_bytes=2**40),
    ]  # fmt: skip
    rogue.script.auto_paused = [live]
    rogue.script.creating = [live, gone]
    rogue.script.ended = [pb.SandboxEgress(sandbox_id=live, egress_bytes=2**41)]
    try:
        async with cp_side(platform) as (engine, pool):
            for _ in range(2):
                await monitor_pass(HostMonitor(engine, pool, audit.record), rogue)  # type: ignore[arg-type]
        after = await _row(platform, live)
        assert after["egress_bytes"] < 2**40, after  # the real host's own readings may add some
        del after["egress_bytes"], before["egress_bytes"]
        assert after == before
        assert (await _row(platform, gone))["status"] == "stopped"
        got = await _api(alice, "GET", f"/v1/sandboxes/{live}")
        assert got.json()["status"] == "running", got.text
        r = await _api(alice, "POST", f"/v1/sandboxes/{live}/exec", {"cmd": "true"})
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    finally:
        rogue.script.listed, rogue.script.auto_paused, rogue.script.creating, rogue.script.ended = (
            [],
            [],
            [],
            [],
        )
        await _api(alice, "DELETE", f"/v1/sandboxes/{live}")


async def test_a_byoc_hosts_certificate_cannot_call_another_agent(
    platform: Platform, rogue: RogueHost
) -> None:
    """mallory's host certificate (server authentication only) presented as a client to the
    platform's agent: refused in the TLS handshake (held)."""
    creds = load_credentials(rogue.data_dir)
    assert creds is not None
    rows = await platform.sql("SELECT id, address FROM hosts WHERE type = 'regular' AND status = 'online'")
    target = rows[0]._mapping
    channel = grpc.aio.secure_channel(
        target["address"],
        grpc.ssl_channel_credentials(
            root_certificates=creds.ca_cert_pem.encode(), private_key=creds.key_pem.encode(),
            certificate_chain=creds.cert_pem.encode(),
        ),
        options=[("grpc.ssl_target_name_override", ids.host_id(target["id"]))],
    )  # fmt: skip
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.HostAgentStub(channel).ListSandboxes(pb.ListSandboxesRequest(), timeout=20)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    finally:
        await channel.close(None)


# ------------------------------------------------------------------ the CP's memory and CPU


async def test_huge_agent_answers_are_refused_before_they_are_held(
    platform: Platform, mallory: Tenant, rogue: RogueHost
) -> None:
    """Four unary execs at once on mallory's sandbox, each answered with one 100 MiB output
    message: the CP refused them (413) only after it had received each whole (its channels took
    128 MiB messages; no real agent sends more than a 4 MiB guest frame at once): its peak
    memory rose by ~0.5 GB. Now a message past the channel's cap is refused from its length,
    and the CP's peak stays put."""
    rogue.script.host_ip = "10.11.0.4"
    r = await _api(mallory, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    rogue.script.exec_output = b"x" * (100 * MiB)
    try:
        Path(f"/proc/{platform.cp.pid}/clear_refs").write_text("5")  # the peak starts from now
        peak_before = _peak_rss(platform.cp.pid)
        answers = await asyncio.gather(
            *(_api(mallory, "POST", f"/v1/sandboxes/{sid}/exec", {"cmd": "true"}) for _ in range(4))
        )
        grown = _peak_rss(platform.cp.pid) - peak_before
        assert [a.status_code for a in answers] == [413] * 4, [a.text[:200] for a in answers]
        assert grown < 100 * MiB, f"the CP's peak grew {grown / MiB:.0f} MiB"
    finally:
        rogue.script.exec_output = b""
        await _api(mallory, "DELETE", f"/v1/sandboxes/{sid}")


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM; reset by writing 5 to clear_refs)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_a_listing_past_the_bound_is_refused_whole(platform: Platform, rogue: RogueHost) -> None:
    """More made-up sandboxes in one ``ListSandboxes`` answer than a host runs (100 000 were taken
    apart on the CP's event loop, ~0.2 s and ~35 MiB, and then looked up in one statement): the
    monitor refuses an answer past ``monitor.MAX_LISTED`` entries whole."""
    fake = [
        pb.SandboxInfo(sandbox_id=ids.sandbox_id(uuid.uuid4()), status="running")
        for _ in range(monitor_mod.MAX_LISTED + 1)
    ]
    rogue.script.listed = fake
    try:
        async with cp_side(platform) as (engine, pool):
            monitor = HostMonitor(engine, pool, audit.record)  # type: ignore[arg-type]
            with pytest.raises(AgentError) as err:
                await monitor._list(await _host_row(platform, rogue.host_id))
            assert err.value.rpc_code == "RESOURCE_EXHAUSTED", err.value
    finally:
        rogue.script.listed = []


async def _host_row(platform: Platform, host_id: str) -> dict[str, Any]:
    rows = await platform.sql(
        "SELECT id, address FROM hosts WHERE id = :h", h=ids.parse_id(ids.Kind.HOST, host_id)
    )
    return dict(rows[0]._mapping)


async def test_a_hosts_layer_listing_past_one_statement_does_not_stop_the_platforms_collection(
    platform: Platform, rogue: RogueHost
) -> None:
    """12 000 made-up layers in mallory's host's ``ListLayers``: the whole platform's layer
    collection failed (one INSERT of 36 000 parameters), every pass, for as long as she kept it
    up. Now a host's answer past ``layer_gc.MAX_HOST_LAYERS`` is not believed (that host is
    skipped, as one that did not answer) and the collection runs."""
    digests = [hashlib.sha256(f"fake{i}".encode()).hexdigest() for i in range(12_000)]
    rogue.script.layers = [pb.LayerInfo(digest=d, size=1, in_use=True) for d in digests]
    try:
        async with cp_side(platform) as (engine, pool):
            store = DirectoryStore(platform.cp.home / "store")
            report = await layer_gc.collect(engine, store, pool, grace_s=1e9)
        assert report.ran
        held = await platform.sql(
            "SELECT count(*) AS n FROM host_layers WHERE host_id = :h",
            h=ids.parse_id(ids.Kind.HOST, rogue.host_id),
        )
        assert held[0].n == 0, held
    finally:
        rogue.script.layers = []


async def test_hosts_that_never_answer_do_not_hold_the_monitor_pass(
    platform: Platform, mallory: Tenant, alice: Tenant, tmp_path: Path
) -> None:
    """Three of mallory's hosts hold every ``ListSandboxes`` open: each held a monitor slot (and
    a database connection) to the RPC's deadline, twice, and the pass waited for them all, so
    the platform's hosts were checked (a returned host's sandboxes restored, a dead replica's
    creates settled) only as often as her hosts let it: with 1000 of them, once an hour. Now a
    pass checks the platform's hosts and leaves BYOC hosts' checks running on their own, at most
    one per host and half the monitor's slots between them."""
    hosts = [await _rogue_host(platform, mallory, tmp_path / f"h{i}") for i in range(3)]
    r = await _api(alice, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    await platform.sql(
        "UPDATE sandboxes SET status = 'missing', last_updated = now() - interval '1 minute' WHERE id = :i",
        i=ids.parse_id(ids.Kind.SANDBOX, sid),
    )
    for h in hosts:
        h.script.hang_listing = True
        await h.beat()
    try:
        async with cp_side(platform) as (engine, pool):
            monitor = HostMonitor(engine, pool, audit.record, concurrency=2)  # type: ignore[arg-type]
            result = await monitor.run_once()
            assert sid in result.to_running, result  # alice's host was checked in this pass
            # After the pass: mallory's hosts are still being asked, one at a time.
            deadline = asyncio.get_running_loop().time() + 30
            seen = 0
            while asyncio.get_running_loop().time() < deadline and seen < 5:
                held = sum(h.script.listing_held for h in hosts)
                assert held <= 1, f"{held} checks of mallory's hosts at once, past half the slots"
                seen += held
                await asyncio.sleep(0.2)
            assert seen >= 5, "the pass waited for the hosts that never answer"
            for h in hosts:
                h.script.release.set()
            await monitor.settled()
    finally:
        for h in hosts:
            h.script.release.set()
            await h.server.stop(0)
            async with httpx.AsyncClient(base_url=platform.url, timeout=60) as c:
                await c.delete(f"/v1/hosts/{h.host_id}?force=true", headers=_jwt(mallory))
        await _api(alice, "DELETE", f"/v1/sandboxes/{sid}")


# ------------------------------------------------------------------ another host's identity


async def test_a_byoc_host_cannot_get_a_certificate_in_another_hosts_name(
    platform: Platform, mallory: Tenant, rogue: RogueHost
) -> None:
    """The CP dials a host with the TLS name ``host-<its id>`` and trusts any certificate of its
    CA carrying that name. mallory registered a host at the address ``host-<the platform host's
    id>:50051`` and was issued a certificate naming the platform's host: served from where the
    CP dials that host, it passed as that host (every team's creates, env secrets, files). Now
    such an address is a 400 (the token stays unused), and the CA never names another host."""
    victim = ids.host_id((await platform.sql("SELECT id FROM hosts WHERE type = 'regular'"))[0].id)
    async with httpx.AsyncClient(base_url=platform.url, timeout=60) as c:
        for address in (f"{victim}:50051", f"{victim.upper()}:50051", f"Host-{victim[5:]}:443"):
            body = {"type": "byoc", "team_id": mallory.team_id}
            r = await c.post("/v1/hosts", json=body, headers=_jwt(mallory))
            assert r.status_code == 201, r.text
            host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
            r = await c.post("/v1/hosts/register", json={"token": token, "address": address})
            assert r.status_code == 400, (address, r.text[:300])
            r = await c.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:9"})
            assert r.status_code == 201, r.text[:300]
            r = await c.delete(f"/v1/hosts/{host_id}?force=true", headers=_jwt(mallory))
            assert r.status_code == 204, r.text
    ca = CertificateAuthority.load_or_create(platform.cp.home / "ca")
    issued = ca.issue_host_cert(rogue.host_id, f"{victim}:50051")
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.lower() for n in names.get_values_for_type(x509.DNSName)] == [rogue.host_id], names


# ------------------------------------------------------------------ listings that never end


@pytest.mark.parametrize("pages", ["empty", "one"])
async def test_a_listing_that_never_ends_is_cut_off(
    platform: Platform, mallory: Tenant, rogue: RogueHost, pages: str
) -> None:
    """E2B's ListDir gathers a whole listing page by page. mallory's agent answers every page
    "there is more": with no entries the CP asked again for good (a request that never ended,
    an RPC a turn), with one entry a page it asked 50 000 times. Now a page that brings nothing
    ends it (502) and a listing takes at most ``envd_fs.MAX_LIST_PAGES`` pages (413)."""
    rogue.script.host_ip = "10.11.0.5"
    r = await _api(mallory, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    rogue.script.dir_pages, rogue.script.dir_calls = pages, 0
    headers = {
        "E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
        "X-Access-Token": envd_access_token(JWT_SECRET, sid),
    }  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=platform.cp.e2b_url, timeout=30) as c:
            body = {"path": "/", "depth": 1}
            r = await c.post("/filesystem.Filesystem/ListDir", json=body, headers=headers)
        assert r.status_code in (413, 429, 500, 502), r.text[:300]  # Connect: 429 resource_exhausted
        assert rogue.script.dir_calls <= envd_fs.MAX_LIST_PAGES, rogue.script.dir_calls
    finally:
        rogue.script.dir_pages = ""
        await _api(mallory, "DELETE", f"/v1/sandboxes/{sid}")


def _points(timestamps: range | list[int]) -> list[pb.MetricPoint]:
    return [pb.MetricPoint(timestamp_unix=t, cpu_pct=1.0, mem_bytes=1, disk_bytes=1) for t in timestamps]


async def test_a_pause_keeps_no_more_metric_points_than_an_agent_holds(
    platform: Platform, mallory: Tenant, rogue: RogueHost
) -> None:
    """A pause keeps the sandbox's metric points as rows. mallory's agent answered 6000 points
    a second apart (each pause 6000 new rows, a pause/resume loop without end), and points from
    1970 and the year 2100. Now a pause keeps what a real agent holds: at most 120 points a
    range, within the range's span of now."""
    now = int(time.time())
    answers = [_points(range(now - 6000, now)), _points([1, 2, 3, 4_102_444_800, now - 30, now - 10])]
    r = await _api(mallory, "POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    u = ids.parse_id(ids.Kind.SANDBOX, sid)
    try:
        for answer in answers:
            rogue.script.metric_points = answer
            assert (await _api(mallory, "POST", f"/v1/sandboxes/{sid}/pause")).status_code == 200
            assert (await _api(mallory, "POST", f"/v1/sandboxes/{sid}/resume")).status_code == 200
        q = "SELECT extract(epoch FROM ts)::bigint AS at FROM sandbox_metric_points WHERE sandbox_id = :u"
        rows = await platform.sql(q, u=u)
        kept = sorted(r.at for r in rows)
        assert kept == [now - 30, now - 10], kept[:10]
    finally:
        rogue.script.metric_points = []
        await _api(mallory, "DELETE", f"/v1/sandboxes/{sid}")


# ------------------------------------------------------------------ the CP's network, seen


def test_a_byoc_address_does_not_make_the_cp_a_port_scanner(platform: Platform) -> None:
    """eve's BYOC hosts registered at addresses of the CP's own network (a closed port, the CP's
    HTTP port, its PostgreSQL): a create on each was a 502 naming the address dialled and why it
    failed ("Connection refused", "WRONG_VERSION_NUMBER", "Socket closed", the certificate
    check), a map of what listens where and what speaks TLS. Now each is the same 502."""
    eve = signup(platform.url, "eve")
    jwt = _jwt(eve)
    with httpx.Client(base_url=platform.url, timeout=120) as c:
        on = {"enabled": True}
        r = c.put(f"/v1/admin/teams/{eve.team_id}/byoc", json=on, headers=platform.user_headers)
        assert r.status_code == 204, r.text
        cp_port = platform.cp.url.rsplit(":", 1)[1]
        pg_port = platform.cp.db_url.rsplit(":", 1)[1].split("/")[0]
        messages = set()
        for address in ("127.0.0.1:9", f"127.0.0.1:{cp_port}", f"127.0.0.1:{pg_port}"):
            r = c.post("/v1/hosts", json={"type": "byoc", "team_id": eve.team_id}, headers=jwt)
            assert r.status_code == 201, r.text
            host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
            assert c.post("/v1/hosts/register", json={"token": token, "address": address}).status_code == 201
            r = c.post("/v1/sandboxes", json={"template": "minimal"}, headers={"X-API-Key": eve.api_key})
            assert r.status_code == 502, r.text[:300]
            messages.add(r.json()["error"]["message"])
            assert c.delete(f"/v1/hosts/{host_id}?force=true", headers=jwt).status_code == 204
        assert messages == {"host agent unreachable: failed to connect"}, messages


# ------------------------------------------------------------------ refreshes without end


def test_a_host_refreshing_in_a_loop_is_held_back(platform: Platform, mallory: Tenant) -> None:
    """Each refresh issues a certificate and writes five statements (~8 ms of the CP's CPU,
    four times an API call's), and nothing counted them: one client chaining refreshes took a
    CP core. Now a host gets a burst of ``host_link.REFRESH_BURST``, then one a minute (429 with
    ``Retry-After``, its token still good); another host's refreshes are its own."""
    jwt = _jwt(mallory)
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        tokens, hosts = [], []
        for _ in range(2):
            r = c.post("/v1/hosts", json={"type": "byoc", "team_id": mallory.team_id}, headers=jwt)
            assert r.status_code == 201, r.text
            hosts.append(r.json()["host"]["id"])
            r = c.post(
                "/v1/hosts/register", json={"token": r.json()["registration_token"], "address": "127.0.0.1:9"}
            )
            assert r.status_code == 201, r.text
            tokens.append(r.json()["refresh_token"])
        codes = []
        for _ in range(int(host_link.REFRESH_BURST) + 5):
            r = c.post("/v1/hosts/auth/refresh", json={"refresh_token": tokens[0]})
            codes.append(r.status_code)
            if r.status_code == 200:
                tokens[0] = r.json()["refresh_token"]
        assert codes.count(200) == host_link.REFRESH_BURST and codes[-1] == 429, codes
        assert int(r.headers["Retry-After"]) >= 1, r.headers
        unspent = _sql_rows(
            platform,
            "SELECT count(*) AS n FROM host_refresh_tokens WHERE token_hash = :h AND revoked_at IS NULL",
            h=hashlib.sha256(tokens[0].encode()).hexdigest(),
        )
        assert unspent[0].n == 1, unspent
        r = c.post("/v1/hosts/auth/refresh", json={"refresh_token": tokens[1]})
        assert r.status_code == 200, r.text
        for h in hosts:
            assert c.delete(f"/v1/hosts/{h}?force=true", headers=jwt).status_code == 204


def _sql_rows(platform: Platform, statement: str, **params: Any) -> Any:
    return asyncio.run(platform.sql(statement, **params))
