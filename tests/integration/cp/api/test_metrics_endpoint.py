"""GET /metrics on the control plane (issue 18 item 1): who may read it, and the families it
carries, parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.test_grafana_dashboard import DASHBOARD, panel_metrics, sample_names
from warren import clock, ids
from warren.cp.app import create_app

from .conftest import assert_error, make_admin, make_settings, signup

SCRAPE_TOKEN = "scrape-" + "t" * 40

# Every family issue 18 asks for, by the name the parser reports (counters without `_total`).
FAMILIES = {
    "warren_sandboxes": "gauge",
    "warren_sandbox_create_duration_seconds": "histogram",
    "warren_exec_duration_seconds": "histogram",
    "warren_file_op_duration_seconds": "histogram",
    "warren_http_request_duration_seconds": "histogram",
    "warren_agent_rpc_errors": "counter",
    "warren_host_heartbeat_age_seconds": "gauge",
    "warren_hosts": "gauge",
    "warren_scheduler_decisions": "counter",
    "warren_template_store_layers": "gauge",
    "warren_template_store_bytes": "gauge",
    "warren_template_versions": "gauge",
    "warren_db_pool_connections": "gauge",
    "warren_team_sandbox_seconds": "counter",
    "warren_team_vcpu_seconds": "counter",
    "warren_team_memory_mib_seconds": "counter",
    "warren_team_egress_bytes": "counter",
}


@pytest.fixture(scope="module")
async def app(db_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(db_url, metrics_token=SCRAPE_TOKEN))
    async with application.router.lifespan_context(application):
        yield application


def _samples(body: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(body):
        assert family.name not in out or not family.samples, f"{family.name} twice"
        out.setdefault(family.name, []).extend(family.samples)
        assert FAMILIES.get(family.name, family.type) == family.type, family
    return out


async def test_only_admins_and_the_scrape_token_read_metrics(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    assert_error(await client.get("/metrics"), 401)
    user = await signup(client, name="NotAdmin")
    assert_error(await client.get("/metrics", headers=user.h), 403)
    key = (await client.post("/v1/api-keys", json={"name": "k"}, headers=user.h)).json()["key"]
    assert (await client.get("/metrics", headers={"X-API-Key": key})).status_code == 401
    for wrong in ("scrape-" + "t" * 39, SCRAPE_TOKEN + "x", "garbage"):
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401, (wrong, r.status_code)
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    admin = await signup(client, name="Admin")
    await make_admin(engine, admin)
    assert (await client.get("/metrics", headers=admin.h)).status_code == 200


async def test_the_scrape_carries_every_family(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    admin = await signup(client, name="MetricsAdmin")
    await make_admin(engine, admin)
    # A host that heartbeated 12 s ago, with a running sandbox of the admin's team on it.
    r = await client.post("/v1/hosts", json={"type": "regular"}, headers=admin.h)
    assert r.status_code == 201, r.text
    host_id = r.json()["host"]["id"]
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    team_uuid = ids.parse_id(ids.Kind.TEAM, admin.team_id)
    now = clock.now()
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE hosts SET last_heartbeat_at = :t, status = 'offline' WHERE id = :h"),
            {"t": now - timedelta(seconds=12), "h": host_uuid},
        )
        await conn.execute(
            text(
                "INSERT INTO sandboxes (id, team_id, host_id, status, vcpus, memory_mb, created_at,"
                " started_at, egress_bytes) VALUES (:id, :team, :host, 'running', 2, 1024, :at, :at, 12345)"
            ),
            {"id": uuid.uuid4(), "team": team_uuid, "host": host_uuid, "at": now},
        )
    # A create with no online host: refused, and timed.
    r = await client.post("/v1/sandboxes", json={"template": "minimal"}, headers=admin.h)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available", r.text
    clock.advance(10)
    try:
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    finally:
        clock.reset()
    assert r.status_code == 200, r.text
    families = _samples(r.text)
    assert set(FAMILIES) <= set(families), set(FAMILIES) - set(families)
    samples = [s for family in families.values() for s in family]

    def value(name: str, **labels: str) -> float:
        hits = [
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(hits) == 1, (name, labels, hits)
        return hits[0]

    assert value("warren_sandboxes", state="running", host=host_id) == 1
    assert value("warren_host_heartbeat_age_seconds", host=host_id) >= 22
    assert value("warren_scheduler_decisions_total", outcome="refused_no_hosts") >= 1
    assert value("warren_sandbox_create_duration_seconds_count", result="error") >= 1
    secs = value("warren_team_sandbox_seconds_total", team=admin.team_id)
    assert secs >= 10
    assert value("warren_team_vcpu_seconds_total", team=admin.team_id) == pytest.approx(2 * secs)
    assert value("warren_team_memory_mib_seconds_total", team=admin.team_id) == pytest.approx(1024 * secs)
    assert value("warren_team_egress_bytes_total", team=admin.team_id) == 12345
    assert value("warren_db_pool_connections", kind="limit") >= 1

    # Every CP-side metric the Grafana dashboard reads is in this live scrape.
    live = sample_names(text_string_to_metric_families(r.text))
    used = {m for names in panel_metrics(json.loads(DASHBOARD.read_text())).values() for m in names}
    cp_side = {m for m in used if not m.startswith("warren_agent_") or m == "warren_agent_rpc_errors_total"}
    assert cp_side and cp_side <= live, cp_side - live


async def test_every_response_names_its_request(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-Id": "lb-abc.123"})
    assert r.headers["x-request-id"] == "lb-abc.123"
    generated = (await client.get("/healthz")).headers["x-request-id"]
    assert len(generated) == 32 and generated != (await client.get("/healthz")).headers["x-request-id"]
    for hostile in ("x" * 129, "a b", "a\tb", 'a"b', "é"):
        r = await client.get("/nope", headers={"X-Request-Id": hostile.encode("utf-8")})
        assert r.headers["x-request-id"] != hostile and len(r.headers["x-request-id"]) == 32
