"""The control plane's Prometheus metrics (docs/operations.md, "Metrics").

Two kinds, on one registry (:data:`REGISTRY`):

- **In-process** histograms and counters, per replica (each replica counts what it served):
  request latency by route, sandbox create / exec / file-operation latency, agent RPC errors
  by gRPC code, scheduler decisions and refusals, and the database pool's use.
- **Database figures** read at scrape time from PostgreSQL (``services/platform_metrics.py``), so
  every replica reports the same values: sandboxes by state and host, host heartbeat age, the
  template store, per-team usage. :func:`render` adds them to the scrape.

Imports nothing of the CP but ``prometheus_client``: the hosts layer, the services and the HTTP
middleware all count into it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, open fds, CPU seconds

# Latency buckets, seconds: API calls are milliseconds, creates and long execs seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_SECONDS = Histogram(
    "warren_http_request_duration_seconds",
    "HTTP requests served by this replica, by method, route template and status class.",
    ["method", "route", "status"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
CREATE_SECONDS = Histogram(
    "warren_sandbox_create_duration_seconds",
    "POST /v1/sandboxes, request to response, by result (ok, client_error, error).",
    ["result"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
EXEC_SECONDS = Histogram(
    "warren_exec_duration_seconds",
    "Command runs (POST /v1/sandboxes/{id}/exec and process starts), by result.",
    ["result"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
FILE_SECONDS = Histogram(
    "warren_file_op_duration_seconds",
    "File operations (/v1/sandboxes/{id}/files/…), by operation and result.",
    ["op", "result"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
AGENT_RPC_ERRORS = Counter(
    "warren_agent_rpc_errors",
    "Failed calls from this replica to host agents, by RPC method and gRPC status code.",
    ["method", "code"],
    registry=REGISTRY,
)
SCHEDULER_DECISIONS = Counter(
    "warren_scheduler_decisions",
    "Host choices for new sandboxes: placed, or refused (quota, capacity, no_hosts).",
    ["outcome"],
    registry=REGISTRY,
)
DB_POOL = Gauge(
    "warren_db_pool_connections",
    "This replica's database pool: size (open), checked_out (in use), overflow, limit.",
    ["kind"],
    registry=REGISTRY,
)
for _outcome in ("placed", "refused_quota", "refused_capacity", "refused_no_hosts"):
    SCHEDULER_DECISIONS.labels(_outcome)  # every outcome present from the first scrape


def result_of(status: int) -> str:
    """A response status as the ``result`` label: ok, client_error or error."""
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "error"


class _Families(Collector):
    """Metric families computed elsewhere (at scrape time), served once."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(db_families: Iterable[Metric] = ()) -> bytes:
    """The scrape body: this replica's metrics plus the database figures read for this scrape."""
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Families(db_families))
    return generate_latest(REGISTRY) + generate_latest(extra)


__all__ = [
    "AGENT_RPC_ERRORS",
    "CREATE_SECONDS",
    "DB_POOL",
    "EXEC_SECONDS",
    "FILE_SECONDS",
    "HTTP_SECONDS",
    "REGISTRY",
    "SCHEDULER_DECISIONS",
    "render",
    "result_of",
]
