"""Who may scrape the CP's ``/metrics``, and the figures read from PostgreSQL for each scrape
(docs/operations.md, "Metrics").

The figures come from the database at scrape time, so every replica answers the same: sandboxes
by state and host, each host's heartbeat age, the template store, and each team's usage
counters. Usage is wall time from create to stop of every sandbox that started (a running one
counts up to now), times its vCPUs and memory; the schema keeps no ledger of pause intervals, so
a paused sandbox's counters hold still while it is paused and the interval is counted once it
resumes or ends. Egress bytes are what each sandbox sent out through its host, as the host
monitor collected them from the agents (``cp/hosts/usage.py``), kept in the sandbox's row after
it ends.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit
from warren.cp.security.credentials import Credentials
from warren.cp.services.authn import authenticate
from warren.cp.telemetry import DB_POOL
from warren.errors import Forbidden, Unauthorized

_SANDBOXES = text(
    "SELECT status, host_id, count(*) AS n FROM sandboxes WHERE status NOT IN ('stopped', 'error')"
    " GROUP BY status, host_id"
)
_HOSTS = text("SELECT id, type, status, last_heartbeat_at FROM hosts")
_LAYERS = text("SELECT count(*) AS n, coalesce(sum(size_bytes), 0) AS bytes FROM layers")
_TEMPLATES = text("SELECT source, count(*) AS n FROM templates GROUP BY source")
# A sandbox's usage window: create → stop (its last update once stopped, errored or paused),
# or → now while it may be running (pending, starting, running, missing: its host is silent).
# Plus the usage of rows the retention pass deleted (services/retention.py sums an ended row the
# same way, in exact numerics, so a counter never goes down when rows go).
_USAGE = text(
    """
    SELECT team_id, sum(secs) AS secs, sum(vcpu_secs) AS vcpu_secs, sum(mem_secs) AS mem_secs,
           sum(egress) AS egress
    FROM (
        SELECT team_id, secs, secs * vcpus AS vcpu_secs, secs * memory_mb AS mem_secs,
               egress_bytes AS egress
        FROM (
            SELECT team_id, vcpus, memory_mb, egress_bytes,
                   greatest(0, extract(epoch FROM
                       (CASE WHEN status IN ('pending', 'starting', 'running', 'missing')
                             THEN CAST(:now AS timestamptz)
                             ELSE last_updated END) - created_at)) AS secs
            FROM sandboxes WHERE started_at IS NOT NULL
        ) AS live
        UNION ALL
        SELECT team_id, secs, vcpu_secs, mem_secs, egress FROM team_usage_retired
    ) AS s
    GROUP BY team_id
    """
)


async def authorize_scrape(engine: AsyncEngine, settings: Settings, creds: Credentials) -> None:
    """A scrape needs ``Authorization: Bearer`` with ``WARREN_METRICS_TOKEN`` (compared in
    constant time) or a platform admin's JWT: 401 without credentials, 403 for anyone else."""
    token = settings.metrics_token
    if token and creds.bearer and hmac.compare_digest(creds.bearer.encode(), token.encode()):
        return
    if not creds.bearer and not creds.api_key:
        raise Unauthorized("metrics need a platform admin's token or the scrape token")
    ctx = await authenticate(engine, creds, require_user=True, jwt_secret=settings.jwt_secret)
    if not ctx.is_admin:
        raise Forbidden("admin access required")


def _pool_figures(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    for kind, fn in (("size", "size"), ("checked_out", "checkedout"), ("overflow", "overflow")):
        method = getattr(pool, fn, None)
        if method is not None:
            DB_POOL.labels(kind).set(float(method()))
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", 0)
    if size is not None:
        DB_POOL.labels("limit").set(float(size()) + max(0, int(overflow)))


async def scrape_figures(engine: AsyncEngine) -> list[Metric]:
    """This scrape's database figures, as metric families (and the pool gauge, set)."""
    _pool_figures(engine)
    now = clock.now()
    async with autocommit(engine) as conn:
        sandboxes = (await conn.execute(_SANDBOXES)).all()
        hosts = (await conn.execute(_HOSTS)).all()
        layers = (await conn.execute(_LAYERS)).one()
        templates = (await conn.execute(_TEMPLATES)).all()
        usage = (await conn.execute(_USAGE, {"now": now})).all()
    return list(_families(now.timestamp(), sandboxes, hosts, layers, templates, usage))


def describe_families() -> list[Metric]:
    """The database families with no samples: their names and types, for checks that need no
    database (the Grafana dashboard's test)."""
    return list(_families(0.0, [], [], SimpleNamespace(n=0, bytes=0), [], []))


def _families(
    now: float,
    sandboxes: Sequence[Any],
    hosts: Sequence[Any],
    layers: Any,
    templates: Sequence[Any],
    usage: Sequence[Any],
) -> Iterator[Metric]:
    by_state = GaugeMetricFamily(
        "warren_sandboxes",
        "Sandbox records by status and host (ended ones, stopped or error, left out).",
        labels=["state", "host"],
    )
    for r in sandboxes:
        by_state.add_metric([r.status, ids.host_id(r.host_id)], r.n)
    yield by_state
    age = GaugeMetricFamily(
        "warren_host_heartbeat_age_seconds",
        "Seconds since each host's last heartbeat (hosts that never sent one are left out).",
        labels=["host", "type", "status"],
    )
    state = GaugeMetricFamily("warren_hosts", "Hosts by status.", labels=["status"])
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h.status] = counts.get(h.status, 0) + 1
        if h.last_heartbeat_at is not None:
            age.add_metric(
                [ids.host_id(h.id), h.type, h.status], max(0.0, now - h.last_heartbeat_at.timestamp())
            )
    for status, n in sorted(counts.items()):
        state.add_metric([status], n)
    yield age
    yield state
    yield GaugeMetricFamily("warren_template_store_layers", "Layers in the template store.", value=layers.n)
    yield GaugeMetricFamily(
        "warren_template_store_bytes", "Bytes of the layers in the template store.", value=layers.bytes
    )
    versions = GaugeMetricFamily(
        "warren_template_versions", "Template versions by source.", labels=["source"]
    )
    for r in templates:
        versions.add_metric([r.source or "base"], r.n)
    yield versions
    yield from _usage_families(usage)


def _usage_families(usage: Sequence[Any]) -> Iterator[Metric]:
    names = (
        ("warren_team_sandbox_seconds", "Sandbox wall-seconds per team (create to stop).", "secs"),
        (
            "warren_team_vcpu_seconds",
            "vCPU-seconds reserved per team (sandbox seconds times vCPUs).",
            "vcpu_secs",
        ),
        ("warren_team_memory_mib_seconds", "MiB-seconds of memory reserved per team.", "mem_secs"),
        (
            "warren_team_egress_bytes",
            "Bytes the team's sandboxes sent out through their hosts (IP packets the hosts forwarded).",
            "egress",
        ),
    )
    for name, doc, column in names:
        family = CounterMetricFamily(name, doc, labels=["team"])
        for r in usage:
            family.add_metric([ids.team_id(r.team_id)], float(getattr(r, column) or 0))
        yield family
