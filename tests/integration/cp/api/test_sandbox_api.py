"""Sandbox lifecycle API against a real control plane and a scripted agent (a real gRPC server
over the same mTLS as ``warren agent``), to pin exactly what the CP sends and how it maps agent
errors. test_multihost.py runs the lifecycle on real agents."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.harness.cp import InProcessCP, User, sql
from tests.harness.fake_agent import serve_fake_agent
from warren import ids
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc


@dataclass
class ScriptedAgent(pb_grpc.HostAgentServicer):
    created: list[Any] = field(default_factory=list)
    destroy_error: grpc.StatusCode | None = None
    create_error: grpc.StatusCode | None = None
    calls: list[str] = field(default_factory=list)

    async def CreateSandbox(self, request: Any, context: Any) -> Any:
        self.calls.append("CreateSandbox")
        if self.create_error is not None:
            await context.abort(self.create_error, "create failed")
        self.created.append(request)
        return pb.CreateSandboxResponse(sandbox_id=request.sandbox_id, status="running", host_ip="10.11.0.2")

    async def DestroySandbox(self, request: Any, context: Any) -> Any:
        self.calls.append("DestroySandbox")
        if self.destroy_error is not None:
            await context.abort(self.destroy_error, "destroy failed")
        return pb.DestroySandboxResponse()

    async def PauseSandbox(self, request: Any, context: Any) -> Any:
        self.calls.append("PauseSandbox")
        return pb.PauseSandboxResponse()

    async def ResumeSandbox(self, request: Any, context: Any) -> Any:
        self.calls.append(f"ResumeSandbox:{request.timeout_sec}")
        return pb.ResumeSandboxResponse(sandbox_id=request.sandbox_id, status="running", host_ip="10.11.0.3")

    async def GetSandboxMetrics(self, request: Any, context: Any) -> Any:
        base = int(time.time()) - 120  # a pause keeps points of the last two hours only
        step = 1 if request.range == "10m" else 30
        return pb.GetSandboxMetricsResponse(
            points=[
                pb.MetricPoint(timestamp_unix=base + i * step, cpu_pct=12.6, mem_bytes=1 << 20)
                for i in range(3)
            ]
        )

    async def PingSandbox(self, request: Any, context: Any) -> Any:
        self.calls.append("PingSandbox")
        return pb.PingSandboxResponse()


@dataclass
class Env:
    cp: InProcessCP
    user: User
    key: str
    agent: ScriptedAgent

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        return await self.cp.http.request(method, path, headers={"X-API-Key": self.key}, **kw)


@pytest.fixture(scope="module")
async def env(cp: InProcessCP, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    admin = await cp.signup(admin=True)
    _, token = await admin.create_host()
    agent = ScriptedAgent()
    server, _ = await serve_fake_agent(agent, cp.url, token, Path(tmp_path_factory.mktemp("scripted")))
    user = await cp.signup()
    try:
        yield Env(cp, user, await user.api_key(), agent)
    finally:
        await server.stop(0)


async def test_create_sends_the_resolved_template_and_options(env: Env) -> None:
    r = await env.api("POST", "/v1/sandboxes", json={"vcpus": 0, "memory_mb": -1, "internet": False})
    assert r.status_code == 201, r.text
    sb = r.json()
    assert sb["status"] == "running" and sb["host_ip"] == "10.11.0.2" and sb["internet"] is False
    # timeout_sec 0 = the platform's maximum inactivity timeout (24 h by default), not "never".
    assert (sb["vcpus"], sb["memory_mb"], sb["timeout_sec"], sb["template"]) == (1, 512, 86400, "minimal")
    assert sb["disk_size_mb"] == 5120
    assert "host_id" not in sb and "team_id" not in sb and sb["started_at"]
    req = env.agent.created[-1]
    assert req.sandbox_id == sb["id"] and req.internet is False and req.disk_size_mb == 5120
    assert req.template_id == str(ids.ZERO_UUID) and req.team_id == str(ids.ZERO_UUID)
    audit = await sql(
        env.cp, "SELECT actor_type, action, metadata FROM audit_logs WHERE resource_id = :s", s=sb["id"]
    )
    assert [(a, act, m["template"]) for a, act, m in audit] == [("api_key", "create", "minimal")]
    assert set(audit[0][2]) == {"template", "ip", "request_id"}  # who asked, from where


async def test_snapshot_template_overrides_shape(env: Env) -> None:
    team = ids.parse_id(ids.Kind.TEAM, env.user.team_id)
    tpl = ids.new_uuid()
    await sql(env.cp, "INSERT INTO templates (id, name, type, vcpus, memory_mb, team_id) "
                      "VALUES (:id, 'snap-1', 'snapshot', 2, 1024, :t)", id=tpl, t=team)  # fmt: skip
    r = await env.api("POST", "/v1/sandboxes", json={"template": "snap-1", "vcpus": 4, "memory_mb": 4096})
    assert r.status_code == 201, r.text
    assert (r.json()["vcpus"], r.json()["memory_mb"]) == (2, 1024)
    req = env.agent.created[-1]
    assert (req.vcpus, req.memory_mb, req.template_id, req.team_id) == (2, 1024, str(tpl), str(team))
    # Another team cannot use it.
    other = await env.cp.signup()
    r = await env.cp.http.post("/v1/sandboxes", json={"template": "snap-1"}, headers=other.h)
    assert r.status_code == 404 and r.json()["error"]["message"] == 'template "snap-1" not found'


async def test_create_failure_marks_error_and_maps_the_rpc_code(env: Env) -> None:
    env.agent.create_error = grpc.StatusCode.INTERNAL
    try:
        r = await env.api("POST", "/v1/sandboxes", json={})
    finally:
        env.agent.create_error = None
    assert r.status_code == 502 and r.json()["error"]["code"] == "agent_error"
    rows = await sql(env.cp, "SELECT status, id FROM sandboxes ORDER BY created_at DESC LIMIT 1")
    assert rows[0][0] == "error"
    failed = f"/v1/sandboxes/{ids.sandbox_id(rows[0][1])}"
    assert (await env.api("GET", failed)).json()["end_reason"] == "create_failed"
    # A later DELETE of the ended sandbox keeps the reason it ended with.
    assert (await env.api("DELETE", failed)).status_code == 204
    assert (await env.api("GET", failed)).json()["end_reason"] == "create_failed"
    listed = (await env.api("GET", "/v1/sandboxes")).json()
    assert all(s["status"] not in ("error", "stopped") for s in listed)


async def test_a_create_whose_record_cannot_be_written_is_removed_from_its_host(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent made the sandbox, then marking it running failed: the client gets an error and
    the container does not live on unrecorded."""
    from warren.cp.db.queries import sandboxes as queries

    failing = (
        "SELECT 1 / 0 FROM (SELECT $1::uuid, $2::text, $3::timestamptz, $4::uuid, $5::uuid, $6::text,"
        " $7::text, $8::text, $9::text, $10::jsonb) AS p"
    )
    monkeypatch.setattr(queries, "MARK_RUNNING", failing)
    before = len(env.agent.calls)
    r = await env.api("POST", "/v1/sandboxes", json={})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert env.agent.calls[before:] == ["CreateSandbox", "DestroySandbox"]


async def test_destroy_swallows_only_not_found(env: Env) -> None:
    sb = (await env.api("POST", "/v1/sandboxes", json={})).json()["id"]
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
        env.agent.destroy_error = code
        r = await env.api("DELETE", f"/v1/sandboxes/{sb}")
        assert r.status_code in (502, 409), (code, r.text)
        live = (await env.api("GET", f"/v1/sandboxes/{sb}")).json()
        assert live["status"] == "running" and "end_reason" not in live  # null while active
    env.agent.destroy_error = grpc.StatusCode.NOT_FOUND
    try:
        assert (await env.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204
    finally:
        env.agent.destroy_error = None
    ended = (await env.api("GET", f"/v1/sandboxes/{sb}")).json()
    assert (ended["status"], ended["end_reason"]) == ("stopped", "deleted")
    calls = len(env.agent.calls)
    assert (await env.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204  # again: no RPC
    assert len(env.agent.calls) == calls


async def test_pause_resume_ping_rules(env: Env) -> None:
    sb = (await env.api("POST", "/v1/sandboxes", json={"timeout_sec": 77})).json()["id"]
    assert (await env.api("POST", f"/v1/sandboxes/{sb}/ping")).status_code == 204
    r = await env.api("POST", f"/v1/sandboxes/{sb}/resume")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    assert (await env.api("POST", f"/v1/sandboxes/{sb}/pause")).json()["status"] == "paused"
    r = await env.api("POST", f"/v1/sandboxes/{sb}/pause")
    assert r.status_code == 409 and "not running (status: paused)" in r.json()["error"]["message"]
    assert (await env.api("POST", f"/v1/sandboxes/{sb}/ping")).status_code == 409
    r = await env.api("POST", f"/v1/sandboxes/{sb}/resume")
    assert r.status_code == 200 and r.json()["host_ip"] == "10.11.0.3"
    assert "ResumeSandbox:77" in env.agent.calls
    # A sandbox of another team is 404 for every verb.
    other = await env.cp.signup()
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/ping"),
    ]:
        r = await env.cp.http.request(method, f"/v1/sandboxes/{sb}{path}", headers=other.h)
        assert r.status_code == 404, (method, path)
    assert (await env.api("GET", "/v1/sandboxes/cl-abc")).status_code == 400


async def test_no_eligible_host_is_503(env: Env) -> None:
    await sql(env.cp, "UPDATE hosts SET status = 'unreachable'")
    try:
        r = await env.api("POST", "/v1/sandboxes", json={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available"
    finally:
        await sql(env.cp, "UPDATE hosts SET status = 'online'")


async def test_pause_keeps_metric_points_and_destroy_drops_them(env: Env) -> None:
    sb = (await env.api("POST", "/v1/sandboxes", json={})).json()["id"]
    assert (await env.api("POST", f"/v1/sandboxes/{sb}/pause")).status_code == 200
    sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sb)
    q = "SELECT count(*), max(cpu_pct) FROM sandbox_metric_points WHERE sandbox_id = :s"
    # 10m points at +0,+1,+2 s and 2h points at +0,+30,+60 s: five distinct timestamps.
    assert (await sql(env.cp, q, s=sb_uuid))[0] == (5, 13)
    assert (await env.api("DELETE", f"/v1/sandboxes/{sb}")).status_code == 204
    assert (await sql(env.cp, q, s=sb_uuid))[0][0] == 0


async def test_out_of_range_and_malformed_create_is_400_and_writes_nothing(env: Env) -> None:
    before = (await sql(env.cp, "SELECT count(*) FROM sandboxes"))[0][0]
    calls = len(env.agent.calls)
    bodies: list[dict[str, Any]] = [
        {"vcpus": 2**31},
        {"memory_mb": 2**40},
        {"timeout_sec": 2**31},
        {"timeout_sec": -1},
        {"template": "mini\x00mal"},
        {"template": "../etc"},
        {"vcpus": "two"},
        {"unknown": 1},
        {"env": {"": "x"}},
        {"env": {"A=B": "x"}},
        {"env": {"A": "x\x00y"}},
        {"env": {"A": 1}},
        {"env": {f"V{i}": "x" for i in range(300)}},
    ]
    for body in bodies:
        r = await env.api("POST", "/v1/sandboxes", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (body, r.text)
    assert (await sql(env.cp, "SELECT count(*) FROM sandboxes"))[0][0] == before
    assert len(env.agent.calls) == calls


def _returning(ctx: Any) -> Any:
    async def dependency() -> Any:
        return ctx

    return dependency


async def test_create_without_a_live_team_is_403_no_team(env: Env) -> None:
    """SPEC §2.5 step 2. A caller whose context has no team, or whose team was deleted after
    authentication (the race the create's own team read closes), gets 403 ``no_team``."""
    from warren.cp.api.deps import team_context
    from warren.cp.services.context import AuthContext

    deleted = await env.cp.signup()
    team = ids.parse_id(ids.Kind.TEAM, deleted.team_id)
    await sql(env.cp, "UPDATE teams SET deleted_at = now() WHERE id = :t", t=team)
    before = (await sql(env.cp, "SELECT count(*) FROM sandboxes"))[0][0]
    app = env.cp.app
    for ctx in (AuthContext(kind="jwt", team_id=None), AuthContext(kind="api_key", team_id=team)):
        app.dependency_overrides[team_context] = _returning(ctx)
        try:
            r = await env.cp.http.post("/v1/sandboxes", json={})
        finally:
            app.dependency_overrides.pop(team_context, None)
        assert r.status_code == 403 and r.json()["error"]["code"] == "no_team", r.text
    assert (await sql(env.cp, "SELECT count(*) FROM sandboxes"))[0][0] == before
    # Through the real auth, that team's credentials are refused outright.
    r = await env.cp.http.post("/v1/sandboxes", json={}, headers=deleted.h)
    assert r.status_code == 401


async def test_a_host_that_left_online_after_being_chosen_gets_no_sandbox(env: Env) -> None:
    """A host delete first flips the host to ``draining`` (under the row lock creates share), so
    a create whose scheduler read the host just before cannot land on it: the insert finds it
    no longer online, reschedules, and answers 503 when nothing else is there."""
    host_uuid, address = (
        await sql(env.cp, "SELECT id, address FROM hosts WHERE status = 'online' AND address <> '' LIMIT 1")
    )[0]
    chosen = {"id": host_uuid, "address": address, "status": "online"}

    class StaleScheduler:  # its answer was read just before the host started draining
        async def select_host(self, conn: Any, team_id: Any, is_byoc: bool, **kw: Any) -> Any:
            return chosen

    real = env.cp.app.state.scheduler
    before = (await sql(env.cp, "SELECT count(*) FROM sandboxes"))[0][0]
    calls = len(env.agent.calls)
    await sql(env.cp, "UPDATE hosts SET status = 'draining' WHERE id = :id", id=host_uuid)
    env.cp.app.state.scheduler = StaleScheduler()
    try:
        r = await env.api("POST", "/v1/sandboxes", json={})
    finally:
        env.cp.app.state.scheduler = real
        await sql(env.cp, "UPDATE hosts SET status = 'online' WHERE id = :id", id=host_uuid)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available", r.text
    assert (await sql(env.cp, "SELECT count(*) FROM sandboxes"))[0][0] == before
    assert len(env.agent.calls) == calls


async def test_team_delete_destroys_its_sandboxes_on_their_host(env: Env) -> None:
    """Deleting a team destroys its sandboxes on their host, best effort: an agent that refuses
    is logged and the delete goes on (SPEC §7.3); the rows end stopped."""
    owner = await env.cp.signup()
    key = {"X-API-Key": await owner.api_key()}
    made = [(await env.cp.http.post("/v1/sandboxes", json={}, headers=key)).json()["id"] for _ in range(2)]
    before = env.agent.calls.count("DestroySandbox")
    env.agent.destroy_error = grpc.StatusCode.INTERNAL
    try:
        r = await owner.req("DELETE", f"/v1/teams/{owner.team_id}")
    finally:
        env.agent.destroy_error = None
    assert r.status_code == 204, r.text
    assert env.agent.calls.count("DestroySandbox") - before == len(made)
    team = ids.parse_id(ids.Kind.TEAM, owner.team_id)
    rows = await sql(
        env.cp,
        "SELECT status, end_reason, count(*) FROM sandboxes WHERE team_id = :t GROUP BY status, end_reason",
        t=team,
    )
    assert rows == [("stopped", "team_deleted", len(made))]
