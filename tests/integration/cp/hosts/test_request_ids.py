"""A request's id from the client through the CP to the agent (cp/hosts/agent_client.py sends
it as gRPC metadata), and the CP's /metrics after real creates (issue 18 items 1 and 2)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.platform import Platform, running_platform

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
async def live(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root")
    # The processes copy the environment when they start: their logs are JSON lines.
    async with running_platform(db_url, platform_dir, {"WARREN_LOG_FORMAT": "json"}) as p:
        yield p


def _agent_lines(p: Platform) -> list[dict[str, object]]:
    text = p.agents[0].log_path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_the_agent_logs_the_client_s_request_id(live: Platform) -> None:
    async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=120) as http:
        r = await http.post("/v1/sandboxes", json={}, headers={"X-Request-Id": "trace-create-1"})
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == "trace-create-1"
        sb = r.json()["id"]
        r = await http.delete(f"/v1/sandboxes/{sb}", headers={"X-Request-Id": "trace-destroy-1"})
        assert r.status_code == 204 and r.headers["x-request-id"] == "trace-destroy-1"
    lines = _agent_lines(live)
    created = [
        x for x in lines if f"sandbox_id={sb}" in str(x["message"]) and "sandbox_created" in str(x["message"])
    ]
    destroyed = [
        x for x in lines if f"sandbox_id={sb}" in str(x["message"]) and "destroyed" in str(x["message"])
    ]
    assert created and {x.get("request_id") for x in created} == {"trace-create-1"}, created
    assert destroyed and {x.get("request_id") for x in destroyed} == {"trace-destroy-1"}, destroyed


@contextlib.asynccontextmanager
async def _sandbox_socket(live: Platform, route: str, request_id: str) -> AsyncIterator[tuple[str, Any]]:
    """A new sandbox and a WebSocket to its ``route`` opened with ``request_id`` (whose upgrade
    answers it back); the sandbox is deleted afterwards."""
    async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=120) as http:
        r = await http.post("/v1/sandboxes", json={})
        assert r.status_code == 201, r.text
        sb = r.json()["id"]
        url = live.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sb}/{route}"
        headers = {"X-API-Key": live.api_key, "X-Request-Id": request_id}
        async with websockets.connect(url, additional_headers=headers) as ws:
            assert ws.response is not None and ws.response.headers["X-Request-Id"] == request_id
            yield sb, ws
        await http.delete(f"/v1/sandboxes/{sb}")


async def test_a_websocket_upgrade_returns_the_request_id(live: Platform) -> None:
    async with _sandbox_socket(live, "exec/stream", "ws-req-1") as (_, ws):
        await ws.send(json.dumps({"type": "start", "cmd": "true"}))
        while json.loads(await ws.recv())["type"] != "exit":
            pass


async def test_a_streamed_watch_carries_the_request_id_to_the_agent(live: Platform) -> None:
    """A watch goes over the host's narrow channel, which skips the client interceptor that adds
    the id to every other call: the watch's call adds it itself (session 24)."""
    async with _sandbox_socket(live, "watch?path=/tmp", "watch-req-1") as (sb, _):
        pass
    started = [x for x in _agent_lines(live) if f"event=watch_started sandbox_id={sb}" in str(x["message"])]
    assert started and {x.get("request_id") for x in started} == {"watch-req-1"}, started


async def test_metrics_after_real_creates(live: Platform) -> None:
    async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=120) as http:
        r = await http.post("/v1/sandboxes", json={})
        assert r.status_code == 201, r.text
        sb = r.json()["id"]
        assert (await http.post(f"/v1/sandboxes/{sb}/exec", json={"cmd": "true"})).status_code == 200
        r = await http.get("/metrics", headers=live.user_headers)  # a platform admin's JWT
        assert r.status_code == 200, r.text
        await http.delete(f"/v1/sandboxes/{sb}")
    samples = [s for f in text_string_to_metric_families(r.text) for s in f.samples]

    def total(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert total("warren_sandboxes", state="running", host=live.host_ids[0]) >= 1
    assert total("warren_sandbox_create_duration_seconds_count", result="ok") >= 1
    assert total("warren_exec_duration_seconds_count", result="ok") >= 1
    assert total("warren_scheduler_decisions_total", outcome="placed") >= 1
    assert total("warren_host_heartbeat_age_seconds", host=live.host_ids[0], status="online") >= 0


async def test_sandbox_create_and_destroy_audit_rows_carry_ip_and_request_id(live: Platform) -> None:
    async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=120) as http:
        r = await http.post("/v1/sandboxes", json={}, headers={"X-Request-Id": "audit-create-7"})
        assert r.status_code == 201, r.text
        sb = r.json()["id"]
        r = await http.delete(f"/v1/sandboxes/{sb}", headers={"X-Request-Id": "audit-destroy-7"})
        assert r.status_code == 204
    rows = await live.sql(
        "SELECT action, metadata FROM audit_logs WHERE resource_id = :sb ORDER BY created_at", sb=sb
    )
    meta = {row.action: row.metadata for row in rows}
    assert meta["create"]["request_id"] == "audit-create-7" and meta["create"]["ip"] == "127.0.0.1"
    assert meta["create"]["template"] == "minimal"
    assert meta["destroy"]["request_id"] == "audit-destroy-7" and meta["destroy"]["ip"] == "127.0.0.1"
