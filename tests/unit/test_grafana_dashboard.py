"""deploy/grafana/warren.json: valid JSON, and every panel's query names metrics that Warren
exports (the CP's and the agent's registries, and the CP's database families). The live
scrapes check the same names: tests/integration/cp/api/test_metrics_endpoint.py and
tests/integration/agent/test_agent_metrics.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric

from warren.agent import telemetry as agent_telemetry
from warren.cp import telemetry as cp_telemetry
from warren.cp.services.platform_metrics import describe_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "warren.json"
_NAME = re.compile(r"\b((?:warren|process)_[a-z0-9_]+)\b")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def sample_names(families: Iterable[Metric]) -> set[str]:
    """What a query may name: each family's sample names (``_total``, ``_bucket`` …)."""
    return {f.name + suffix for f in families for suffix in _SUFFIXES.get(f.type, ("",))}


def exported() -> set[str]:
    families = [
        *cp_telemetry.REGISTRY.collect(),
        *describe_families(),
        *agent_telemetry.REGISTRY.collect(),
        *agent_telemetry.manager_families({}, 0, 0, 0),
    ]
    return sample_names(families)


def panel_metrics(dashboard: dict[str, object]) -> dict[str, set[str]]:
    """Each panel's title → the metric names its queries use."""
    out: dict[str, set[str]] = {}
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    for panel in panels:
        if panel["type"] == "row":
            continue
        exprs = [t["expr"] for t in panel["targets"]]
        out[panel["title"]] = {m for e in exprs for m in _NAME.findall(e)}
    return out


def test_the_dashboard_is_valid_json_with_unique_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Warren" and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_names_exported_metrics() -> None:
    names = exported()
    used = panel_metrics(json.loads(DASHBOARD.read_text()))
    assert used
    for title, metrics in used.items():
        assert metrics, f"panel {title!r} names no metric"
        assert metrics <= names, f"panel {title!r}: {metrics - names} not exported"
