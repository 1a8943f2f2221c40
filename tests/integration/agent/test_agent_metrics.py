"""A real agent's GET /metrics (--metrics-listen) and its JSON log lines carrying the CP's
request id (issue 18 items 1 and 2)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.harness.agent import AgentProcess
from tests.harness.machine import free_port
from tests.unit.test_grafana_dashboard import DASHBOARD, panel_metrics, sample_names
from warren import ids
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

FAMILIES = {
    "warren_agent_sandboxes": "gauge",
    "warren_agent_creates_in_progress": "gauge",
    "warren_agent_layers": "gauge",
    "warren_agent_layer_bytes": "gauge",
    "warren_agent_rpc_duration_seconds": "histogram",
    "warren_agent_served_rpc_errors": "counter",
    "process_resident_memory_bytes": "gauge",
}


@pytest.fixture(scope="module")
def metered(agent_root: Path) -> Iterator[tuple[AgentProcess, str]]:
    port = free_port()
    env = {"WARREN_AGENT_METRICS_LISTEN": f"127.0.0.1:{port}", "WARREN_LOG_FORMAT": "json"}
    a = AgentProcess.standalone(agent_root / "metered", env=env).start()
    try:
        yield a, f"http://127.0.0.1:{port}"
    finally:
        a.finish()


def _scrape(url: str) -> list[Sample]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, kind in FAMILIES.items():
        assert name in families and families[name].type == kind, name
    # Every agent metric the Grafana dashboard reads is in this live scrape.
    used = {m for names in panel_metrics(json.loads(DASHBOARD.read_text())).values() for m in names}
    agent_side = {m for m in used if m.startswith("warren_agent_") and m != "warren_agent_rpc_errors_total"}
    assert agent_side and agent_side <= sample_names(families.values()), agent_side
    return [s for f in families.values() for s in f.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    hits = [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(hits)


def _json_lines(agent: AgentProcess) -> list[dict[str, object]]:
    lines = [line for line in agent.log_path.read_text().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def test_metrics_follow_the_agent_s_sandboxes_and_rpcs(metered: tuple[AgentProcess, str]) -> None:
    agent, url = metered
    before = _scrape(url)
    assert _value(before, "warren_agent_sandboxes", state="running") == 0
    sb_id = ids.sandbox_id(ids.new_uuid())
    agent.stub.CreateSandbox(
        pb.CreateSandboxRequest(sandbox_id=sb_id), timeout=600, metadata=[("x-request-id", "req-agent-1")]
    )
    with pytest.raises(grpc.RpcError) as err:
        agent.stub.PingSandbox(pb.PingSandboxRequest(sandbox_id="sb-unknown"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = _scrape(url)
    assert _value(after, "warren_agent_sandboxes", state="running") == 1
    assert _value(after, "warren_agent_rpc_duration_seconds_count", method="CreateSandbox") >= 1
    assert _value(after, "warren_agent_served_rpc_errors_total", method="PingSandbox", code="NOT_FOUND") == 1
    assert httpx.get(url + "/other", timeout=10).status_code == 404


def test_json_log_lines_carry_the_request_id(metered: tuple[AgentProcess, str]) -> None:
    agent, _ = metered
    lines = _json_lines(agent)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    created = [line for line in lines if "event=sandbox_created" in str(line["message"])]
    assert created and created[0]["request_id"] == "req-agent-1", created
    # Too long, or with spaces and quotes: replaced by a fresh id, never logged as sent.
    for hostile in ('evil" id', "x" * 129):
        sb_id = ids.sandbox_id(ids.new_uuid())
        agent.stub.CreateSandbox(
            pb.CreateSandboxRequest(sandbox_id=sb_id), timeout=600, metadata=[("x-request-id", hostile)]
        )
        logged = [line for line in _json_lines(agent) if f"sandbox_id={sb_id}" in str(line["message"])]
        assert logged and all(re.fullmatch("[0-9a-f]{32}", str(line["request_id"])) for line in logged)
