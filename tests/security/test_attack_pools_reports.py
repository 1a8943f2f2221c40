"""Hostile probes of the surfaces session 7 added: the heartbeat's ``HostReport`` body (a hostile
BYOC agent controls every byte of it), the ``runtime`` field of a create, the warm-pool API
(``PUT /v1/hosts/{id}/warm-pools/{template}``) and a hostile agent's answers to it. Each probe
asserts the exact answer: a 400/404/502/503, never a 500, never another team's sandboxes on a
host that lied. What a sandbox claimed from a pool sees: test_attack_pools_claim.py."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.fake_agent import serve_fake_agent
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.attack_helpers import admin as _admin
from tests.security.attack_helpers import as_user as _jwt
from tests.security.attack_helpers import raw_json as _raw
from tests.security.attack_helpers import sql as _sql
from tests.security.attack_helpers import uuid_of as _uuid
from tests.security.attack_helpers import wait_until as _wait
from tests.security.attack_helpers import with_key as _call
from warren import ids
from warren.agent.control_plane import load_credentials
from warren.config import RUNTIMES
from warren.cp.services import host_link, warm_pools
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc
from warren.sdk import InvalidArgumentError, Sandbox, SandboxUnavailableError

pytestmark = pytest.mark.root

INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------ a hostile BYOC host owner


@dataclass
class RogueHost:
    """mallory's BYOC host, registered by her own "agent" (this test): nothing listens at its
    address, and every heartbeat body is whatever she chooses to send."""

    owner: Tenant
    host_id: str
    host_token: str

    def beat(self, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        headers = {"X-Host-Token": self.host_token, "Content-Type": "application/json"}
        if content is None and body is not None:
            content = json.dumps(body).encode()
        with httpx.Client(base_url=self.owner.url, timeout=120) as c:
            return c.post(f"/v1/hosts/{self.host_id}/heartbeat", content=content, headers=headers)


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    return signup(platform.url, "mallory")


def new_rogue_host(platform: Platform, owner: Tenant) -> RogueHost:
    """A BYOC host of ``owner``'s, registered by this test at an address nothing listens on."""
    r = _jwt(owner, "POST", "/v1/hosts", {"type": "byoc", "team_id": owner.team_id})
    assert r.status_code == 201, r.text
    host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        r = c.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:9"})
    assert r.status_code == 201, r.text
    host = RogueHost(owner, host_id, r.json()["token"])
    assert host.beat({"runtimes": ["runc"]}).status_code == 204
    return host


@pytest.fixture(scope="module")
def rogue(platform: Platform, mallory: Tenant) -> RogueHost:
    r = _admin(platform, "PUT", f"/v1/admin/teams/{mallory.team_id}/byoc", {"enabled": True})
    assert r.status_code == 204, r.text
    return new_rogue_host(platform, mallory)


def _host(platform: Platform, host_id: str) -> dict[str, Any]:
    r = _admin(platform, "GET", f"/v1/hosts/{host_id}")
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    return got


_POOL = {"template": "minimal", "target": 1, "ready": 1}
HOSTILE_REPORTS: list[Any] = [
    # runtimes: only runc, crun and gvisor, spelled exactly; 1 to 8 entries
    {"runtimes": []}, {"runtimes": ["runsc"]}, {"runtimes": ["GVISOR"]}, {"runtimes": ["gvisor "]},
    {"runtimes": ["runc\x00"]}, {"runtimes": ["\udfff"]}, {"runtimes": "runc"}, {"runtimes": [1]},
    {"runtimes": [["runc"]]}, {"runtimes": ["runc"] * 9}, {"runtimes": ["runc"] * 100_000},
    {"runtimes": {"runc": True}},
    # disk_free_bytes: a non-negative int64, a JSON integer only
    {"disk_free_bytes": -1}, {"disk_free_bytes": 2**63}, {"disk_free_bytes": 2**64},
    {"disk_free_bytes": 1.5}, {"disk_free_bytes": True}, {"disk_free_bytes": "1"},
    # warm_pools: bounded entries, bounded counts, each template once
    {"warm_pools": [{**_POOL, "template": f"t{i}"} for i in range(33)]},
    {"warm_pools": [{**_POOL, "ready": 2**31}]}, {"warm_pools": [{**_POOL, "ready": -1}]},
    {"warm_pools": [{**_POOL, "target": True}]}, {"warm_pools": [{**_POOL, "ready": 1.0}]},
    {"warm_pools": [{**_POOL, "template": "a\x00b"}]}, {"warm_pools": [{**_POOL, "template": "x" * 201}]},
    {"warm_pools": [{**_POOL, "template": ""}]}, {"warm_pools": [{**_POOL, "template": "../etc"}]},
    {"warm_pools": [_POOL, _POOL]}, {"warm_pools": [_POOL, {**_POOL, "ready": 5}]},
    {"warm_pools": [{**_POOL, "nested": {"a": [1]}}]}, {"warm_pools": {"minimal": 1}},
    # the body itself
    {"unknown": 1}, {"runtimes": ["runc"], "is_admin": True}, [], "x", 5, {"\udfff": 1},
]  # fmt: skip


@pytest.mark.parametrize("body", HOSTILE_REPORTS, ids=lambda b: json.dumps(b)[:60])
def test_a_hostile_heartbeat_report_is_refused_and_stores_nothing(
    platform: Platform, rogue: RogueHost, body: Any
) -> None:
    before = _host(platform, rogue.host_id)
    r = rogue.beat(body)
    assert r.status_code == 400, r.text
    after = _host(platform, rogue.host_id)
    for key in ("runtimes", "warm_pools", "status"):
        assert after.get(key) == before.get(key), (key, before, after)


@pytest.mark.parametrize(
    "content",
    [
        b'{"runtimes": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # deep nesting
        b'{"warm_pools": [' + b",".join([json.dumps(_POOL).encode()] * 400_000) + b"]}",  # 16 MB
        b'{"disk_free_bytes": 1, "disk_free_bytes": -5}',  # a duplicated key: the last one counts
        b'{"runtimes": ["runc"]',  # cut short
        b"\xff\xfe{}",  # not UTF-8
    ],
    ids=["deep", "huge", "duplicate-key", "truncated", "not-utf8"],
)
def test_malformed_report_bytes_are_400_and_the_host_list_still_works(
    platform: Platform, rogue: RogueHost, alice: Tenant, content: bytes
) -> None:
    r = rogue.beat(content=content)
    assert r.status_code in (400, 413), r.text[:300]
    assert _admin(platform, "GET", "/v1/hosts").status_code == 200
    assert _jwt(rogue.owner, "GET", "/v1/hosts").status_code == 200
    assert alice.w("GET", "/v1/sandboxes").status_code == 200


def _platform_runtimes(platform: Platform) -> list[str]:
    offered: list[str] = _host(platform, platform.host_ids[0])["runtimes"]
    return offered


def test_a_byoc_host_that_claims_everything_draws_no_other_teams_sandboxes(
    platform: Platform, rogue: RogueHost, bob: Tenant
) -> None:
    """mallory's host says it offers every runtime, has a huge free disk and a pool of
    ``minimal`` with 2**31-1 ready sandboxes: bob's creates still go to the platform's host, a
    runtime no platform host offers is still a 503, and bob never sees her host."""
    claim = {
        "runtimes": list(RUNTIMES),
        "disk_free_bytes": 2**63 - 1,
        "warm_pools": [{"template": "minimal", "target": INT32_MAX, "ready": INT32_MAX}],
    }
    assert rogue.beat(claim).status_code == 204
    assert _host(platform, rogue.host_id)["runtimes"] == list(RUNTIMES)
    oci = [r for r in _platform_runtimes(platform) if r != "gvisor"]  # gVisor's are slow to make
    made = [bob.create(), bob.create(), *(bob.create(runtime=r) for r in oci)]
    query = "SELECT host_id FROM sandboxes WHERE id = :s"
    hosts = {_sql(platform, query, s=_uuid(ids.Kind.SANDBOX, sid))[0][0] for sid in made}
    assert hosts == {_uuid(ids.Kind.HOST, platform.host_ids[0])}
    for sid in made:
        assert bob.w("DELETE", f"/v1/sandboxes/{sid}").status_code == 204
    listed = _jwt(bob, "GET", "/v1/hosts")
    assert listed.status_code in (200, 403), listed.text
    assert rogue.host_id not in listed.text
    assert _jwt(bob, "GET", f"/v1/hosts/{rogue.host_id}").status_code == 404
    assert bob.w("GET", "/v1/sandboxes").json() == []


def test_another_host_token_cannot_report_for_this_host(platform: Platform, rogue: RogueHost) -> None:
    """mallory's host token, pointed at the platform's host: 403, and nothing stored there."""
    target = platform.host_ids[0]
    before = _host(platform, target)
    forged = RogueHost(rogue.owner, target, rogue.host_token)
    r = forged.beat({"runtimes": ["gvisor"], "warm_pools": [], "disk_free_bytes": 0})
    assert r.status_code == 403, r.text
    after = _host(platform, target)
    assert (after["runtimes"], after.get("warm_pools")) == (before["runtimes"], before.get("warm_pools"))
    r = RogueHost(rogue.owner, rogue.host_id, "garbage." * 10).beat({"runtimes": ["runc"]})
    assert r.status_code == 401, r.text


# ------------------------------------------------------------------------- the runtime field

BAD_RUNTIMES: list[Any] = [
    "GVISOR", "Gvisor", "gvisor ", " runc", "runc\n", "runsc", "docker", "", "runc\x00", "\udfff",
    "x" * 100_000, 1, 0, True, 1.5, ["runc"], {"name": "runc"},
]  # fmt: skip


@pytest.mark.parametrize("runtime", BAD_RUNTIMES, ids=lambda v: repr(v)[:30])
def test_create_refuses_runtimes_that_are_not_exactly_a_known_name(bob: Tenant, runtime: Any) -> None:
    r = _call(bob, "POST", "/v1/sandboxes", {"template": "minimal", "runtime": runtime})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("invalid_request", "validation_error"), r.text
    assert bob.w("GET", "/v1/sandboxes").json() == []


def test_the_sdk_passes_the_runtime_refusals_on(platform: Platform, rogue: RogueHost) -> None:
    """mallory's SDK: a misspelt runtime is InvalidArgumentError, one her only host (runc) does
    not offer is SandboxUnavailableError ``no_hosts_available`` naming it."""
    opts = {"url": platform.url, "api_key": rogue.owner.api_key}
    for runtime in ("GVISOR", "gvisor ", "runsc"):
        with pytest.raises(InvalidArgumentError):
            Sandbox.create(runtime=runtime, **opts)  # type: ignore[arg-type]
    assert rogue.beat({"runtimes": ["runc"]}).status_code == 204
    with pytest.raises(SandboxUnavailableError) as e:
        Sandbox.create(runtime="gvisor", **opts)  # type: ignore[arg-type]
    assert e.value.code == "no_hosts_available" and "gvisor" in e.value.message, e.value
    assert rogue.owner.w("GET", "/v1/sandboxes").json() == []


def test_e2b_create_ignores_a_runtime_field_and_runs_the_default(platform: Platform, bob: Tenant) -> None:
    """E2B's create has no runtime: the key is ignored like any unknown one (E2B's rule), so it
    cannot smuggle a runtime name past the checks either."""
    with httpx.Client(base_url=platform.cp.e2b_url, headers={"X-API-Key": bob.api_key}, timeout=120) as c:
        r = c.post("/sandboxes", **_raw({"templateID": "minimal", "runtime": "GVISOR\x00"}))
        assert r.status_code == 400, r.text  # a NUL anywhere in the body is refused
        r = c.post("/sandboxes", **_raw({"templateID": "minimal", "runtime": "GVISOR"}))
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
        try:
            got = bob.w("GET", f"/v1/sandboxes/{sid}").json()
            # The platform's default: its host's own (crun where the agent found it works).
            hosts = asyncio.run(platform.sql("SELECT default_runtime FROM hosts WHERE status = 'online'"))
            assert got["runtime"] in {h[0] for h in hosts}, got
        finally:
            assert c.delete(f"/sandboxes/{sid}").status_code == 204


# ------------------------------------------------------------------------ PUT warm-pools API


def _put_pool(call: Any, host_id: str, template: str, size: Any) -> httpx.Response:
    r: httpx.Response = call("PUT", f"/v1/hosts/{host_id}/warm-pools/{template}", {"size": size})
    return r


def test_tenants_cannot_set_pools_on_hosts_they_do_not_own(
    platform: Platform, alice: Tenant, rogue: RogueHost
) -> None:
    host = platform.host_ids[0]
    before = _host(platform, host).get("warm_pools")
    rogues_before = _host(platform, rogue.host_id).get("warm_pools")
    # An API key is not a user: 401, as on every user-only route.
    assert _put_pool(lambda m, p, b: _call(alice, m, p, b), host, "minimal", 1).status_code == 401
    # A tenant (and a BYOC owner) does not see the platform's host: 404, as for every host verb.
    for who in (alice, rogue.owner):
        r = _put_pool(lambda m, p, b, t=who: _jwt(t, m, p, b), host, "minimal", 128)
        assert r.status_code == 404, r.text
    # ...nor another team's BYOC host.
    r = _put_pool(lambda m, p, b: _jwt(alice, m, p, b), rogue.host_id, "minimal", 1)
    assert r.status_code == 404, r.text
    assert _host(platform, host).get("warm_pools") == before
    assert _host(platform, rogue.host_id).get("warm_pools") == rogues_before


@pytest.fixture(scope="module")
def alices_private_template(platform: Platform, alice: Tenant) -> str:
    """A template of alice's own (a row is enough: the pool API must not find it for others)."""
    insert = "INSERT INTO templates (id, name, team_id, type) VALUES (gen_random_uuid(), :n, :t, 'base')"
    _sql(platform, insert, n="alices-secret", t=_uuid(ids.Kind.TEAM, alice.team_id))
    return "alices-secret"


BAD_SIZES: list[Any] = [-1, 129, 2**31, 2**63, 2**64, -(2**63) - 1, 1.5, 1.0, True, "1", None, [1], {"a": 1}]


@pytest.mark.parametrize("size", BAD_SIZES, ids=repr)
def test_a_byoc_owner_cannot_size_a_pool_past_the_platforms_bound(rogue: RogueHost, size: Any) -> None:
    r = _put_pool(lambda m, p, b: _jwt(rogue.owner, m, p, b), rogue.host_id, "minimal", size)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("invalid_request", "validation_error"), r.text


@pytest.mark.parametrize(
    "template",
    ["a%00b", "%ED%BF%BF", "..", "%2e%2e", ".hidden", "-x", "x" * 65, "a:b:c", "a:" + "t" * 65, "a%20b",
     "minimal%0a", "a;b", "%25"],
)  # fmt: skip
def test_a_byoc_owner_cannot_name_a_strange_template(rogue: RogueHost, template: str) -> None:
    before = _jwt(rogue.owner, "GET", f"/v1/hosts/{rogue.host_id}").json().get("warm_pools")
    r = _put_pool(lambda m, p, b: _jwt(rogue.owner, m, p, b), rogue.host_id, template, 1)
    # 405: ".." is resolved by the client, and PUT /v1/hosts/{id} is no route.
    assert r.status_code in ((400, 404, 405) if "." in template else (400, 404)), r.text
    assert _jwt(rogue.owner, "GET", f"/v1/hosts/{rogue.host_id}").json().get("warm_pools") == before


def test_a_byoc_owner_cannot_pool_another_teams_template(
    rogue: RogueHost, alices_private_template: str
) -> None:
    """Pooling alice's template would build it on mallory's host (its layers pushed there)."""
    before = _jwt(rogue.owner, "GET", f"/v1/hosts/{rogue.host_id}").json().get("warm_pools")
    for name in (alices_private_template, f"{alices_private_template}:v1", "no-such-template"):
        r = _put_pool(lambda m, p, b: _jwt(rogue.owner, m, p, b), rogue.host_id, name, 1)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == f'template "{name}" not found', r.text
    assert _jwt(rogue.owner, "GET", f"/v1/hosts/{rogue.host_id}").json().get("warm_pools") == before


class LyingAgent(pb_grpc.HostAgentServicer):
    """mallory's agent answering ``SetWarmPool`` with whatever pools she likes."""

    def __init__(self) -> None:
        self.pools: list[pb.WarmPoolStatus] = []
        self.set_calls = 0

    async def SetWarmPool(self, request: Any, context: Any) -> pb.SetWarmPoolResponse:
        self.set_calls += 1
        return pb.SetWarmPoolResponse(pools=self.pools)


def _status(template: str = "minimal", target: int = 1, ready: int = 0) -> pb.WarmPoolStatus:
    return pb.WarmPoolStatus(template=template, target=target, ready=ready)


LYING_ANSWERS: list[list[pb.WarmPoolStatus]] = [
    [_status("minimal\x00")], [_status("x" * 1_000_000)], [_status("../../etc")], [_status("")],
    [_status(ready=-1)], [_status(target=-(2**31))], [_status(f"t{i}") for i in range(1000)],
    [_status(), _status(ready=INT32_MAX)],
]  # fmt: skip


async def test_a_lying_agents_warm_pool_answer_is_not_stored(
    platform: Platform, mallory: Tenant, rogue: RogueHost, tmp_path: Path
) -> None:
    """The answer to ``SetWarmPool`` is stored as the host's pools, as a heartbeat's report is:
    it is held to the same rule (a NUL in it was a 500, a 1 MB name or a negative count was
    stored and shown)."""
    r = await asyncio.to_thread(
        _jwt, mallory, "POST", "/v1/hosts", {"type": "byoc", "team_id": mallory.team_id}
    )
    assert r.status_code == 201, r.text
    host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
    agent = LyingAgent()
    server, _ = await serve_fake_agent(agent, platform.url, token, tmp_path)
    try:
        for answer in LYING_ANSWERS:
            agent.pools = answer
            r = await asyncio.to_thread(_put_pool, partial(_jwt, mallory), host_id, "minimal", 1)
            assert r.status_code == 502, (answer[:1], r.text[:300])
            assert r.json()["error"]["code"] == "agent_error", r.text
            got = await asyncio.to_thread(_jwt, mallory, "GET", f"/v1/hosts/{host_id}")
            assert got.status_code == 200 and got.json().get("warm_pools") is None, got.text[:300]
        agent.pools = [_status(target=1)]  # the truth is stored
        r = await asyncio.to_thread(_put_pool, partial(_jwt, mallory), host_id, "minimal", 1)
        assert r.status_code == 200, r.text
        assert r.json()["warm_pools"] == [{"template": "minimal", "target": 1, "ready": 0}]
    finally:
        await server.stop(0)
        await asyncio.to_thread(_jwt, mallory, "DELETE", f"/v1/hosts/{host_id}?force=true")


async def test_a_host_that_keeps_reporting_its_pools_empty_is_not_reapplied_in_a_loop(
    platform: Platform, mallory: Tenant, rogue: RogueHost, tmp_path: Path
) -> None:
    """Each heartbeat whose pools differ from the sizes set through the API had the CP apply
    them again (an RPC, and the template's layers pushed first when the host says it lacks
    them): an agent beating as fast as it likes, always reporting no pools, had that done in a
    loop. Now at most once per ``REAPPLY_EVERY_S`` per host."""
    r = await asyncio.to_thread(
        _jwt, mallory, "POST", "/v1/hosts", {"type": "byoc", "team_id": mallory.team_id}
    )
    assert r.status_code == 201, r.text
    host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
    agent = LyingAgent()
    server, _ = await serve_fake_agent(agent, platform.url, token, tmp_path)
    try:
        creds = load_credentials(tmp_path)
        assert creds is not None
        host = RogueHost(mallory, host_id, creds.jwt)
        r = await asyncio.to_thread(_put_pool, partial(_jwt, mallory), host_id, "minimal", 1)
        assert r.status_code == 200 and agent.set_calls == 1, r.text
        started = time.monotonic()
        assert (await asyncio.to_thread(host.beat, {"warm_pools": []})).status_code == 204
        deadline = time.monotonic() + 60
        while agent.set_calls < 2:  # the first difference is applied again
            assert time.monotonic() < deadline, "the size was not applied again"
            await asyncio.sleep(0.1)
        taken = 0
        for _ in range(30):
            code = (await asyncio.to_thread(host.beat, {"warm_pools": []})).status_code
            assert code in (204, 429), code  # past the heartbeats' burst: 429 (host_link.BEAT_BURST)
            taken += code == 204
            await asyncio.sleep(0.05)  # room for a background application to run, if one started
        assert taken >= host_link.BEAT_BURST - 2, taken  # the CP did read these reports
        # A call made after the beats: whatever they started is under way or done by now.
        r = await asyncio.to_thread(_put_pool, partial(_jwt, mallory), host_id, "minimal", 1)
        assert r.status_code == 200, r.text
        allowed = 3 + int((time.monotonic() - started) // warm_pools.REAPPLY_EVERY_S)
        assert agent.set_calls <= allowed, (agent.set_calls, allowed)
    finally:
        await server.stop(0)
        await asyncio.to_thread(_jwt, mallory, "DELETE", f"/v1/hosts/{host_id}?force=true")


def test_a_runtime_no_host_of_the_team_offers_is_a_503_naming_it(rogue: RogueHost) -> None:
    """mallory's only host offers runc: gvisor and crun are 503 ``no_hosts_available`` naming the
    runtime (and what her hosts offer); runc goes to her host, where nothing answers: 502/503,
    never a 500."""
    assert rogue.beat({"runtimes": ["runc"]}).status_code == 204
    for runtime in ("gvisor", "crun"):
        r = rogue.owner.w("POST", "/v1/sandboxes", {"template": "minimal", "runtime": runtime})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "no_hosts_available" and f"with the {runtime} runtime" in err["message"], err
    r = rogue.owner.w("POST", "/v1/sandboxes", {"template": "minimal", "runtime": "runc"})
    assert r.status_code in (502, 503), r.text
    assert rogue.owner.w("GET", "/v1/sandboxes").json() == []


def test_a_deleted_hosts_token_reports_nothing(platform: Platform, rogue: RogueHost) -> None:
    """mallory deletes a host of hers and keeps its agent beating with its token: refused, and
    the row stays gone (a heartbeat never brings a host back)."""
    gone = new_rogue_host(platform, rogue.owner)
    host_id = gone.host_id
    assert _jwt(rogue.owner, "DELETE", f"/v1/hosts/{host_id}?force=true").status_code == 204
    r = gone.beat({"runtimes": list(RUNTIMES), "warm_pools": [_POOL]})
    assert r.status_code in (401, 404), r.text
    assert _jwt(rogue.owner, "GET", f"/v1/hosts/{host_id}").status_code == 404
    assert host_id not in _admin(platform, "GET", "/v1/hosts").text


def test_a_host_beating_as_fast_as_it_can_is_held_back(platform: Platform, rogue: RogueHost) -> None:
    """Each heartbeat is a write: mallory's agent beat 92 times a second, every one taken. Now a
    burst, then ``BEATS_PER_S``: the rest are 429 with ``Retry-After``, and nobody else feels it."""
    rogue = new_rogue_host(platform, rogue.owner)  # its own bucket: the module's host beats on
    started = time.monotonic()
    codes: dict[int, int] = {}
    retry_after = set()
    headers = {"X-Host-Token": rogue.host_token}
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        for _ in range(200):
            r = c.post(f"/v1/hosts/{rogue.host_id}/heartbeat", json={"runtimes": ["runc"]}, headers=headers)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 429:
                retry_after.add(r.headers.get("Retry-After"))
    taken = host_link.BEAT_BURST + (time.monotonic() - started) * host_link.BEATS_PER_S
    assert set(codes) <= {204, 429}, codes
    assert codes.get(204, 0) <= taken, (codes, taken)
    if codes.get(429):
        assert retry_after == {"1"}, retry_after
    assert _admin(platform, "GET", "/v1/hosts").status_code == 200
    # A beat once the bucket refilled is taken again.
    _wait(lambda: rogue.beat({"runtimes": ["runc"]}).status_code == 204, 60, "a heartbeat taken again")
