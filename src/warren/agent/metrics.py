"""Per-sandbox metrics: sampled every ``WARREN_AGENT_METRICS_INTERVAL`` s into ring buffers.

CPU % of the sandbox's vCPUs, memory (the runtime's cgroup figure) and disk (its tmpfs used).
Each range keeps a fixed number of points, so memory per sandbox is bounded; nothing is kept
across agent restarts.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from warren import clock
from warren.agent.record import HostSandbox, MetricPoint
from warren.agent.runtime.base import Runtime
from warren.errors import InvalidRequest

# Processes of sandboxes in an OOM storm killed by the agent instead of the kernel (cmds_oom.py).
OOM_STORM_KILLS = Counter(
    "warren_agent_oom_storm_kills",
    "Processes of runc/crun sandboxes in an OOM storm killed by the agent at their memory limit.",
)
# Processes killed for holding a sandbox's socket memory, or its TCP sockets (accept queues
# included), past its ceiling (socket_ceiling.py; the log's event tells which).
SOCKET_MEMORY_KILLS = Counter(
    "warren_agent_socket_memory_kills",
    "Processes of runc/crun sandboxes killed for socket memory or TCP sockets past the sandbox's ceiling.",
)

# Range -> (seconds it covers, points it keeps).
METRIC_RANGES = {"10m": (600, 120), "2h": (7200, 120), "24h": (86400, 144)}


def sample(sb: HostSandbox, runtime: Runtime, disk_dir: Path) -> None:
    """Append one point to each of the sandbox's rings (coarser ranges keep fewer)."""
    stats = runtime.stats(sb.id)
    if stats is None:
        return
    now = clock.time_s()
    cpu_pct = 0.0
    if sb.last_cpu is not None and now > sb.last_cpu[0]:
        cpu_pct = (stats.cpu_ns - sb.last_cpu[1]) / 1e9 / (now - sb.last_cpu[0]) * 100 / sb.vcpus
    sb.last_cpu = (now, stats.cpu_ns)
    try:
        st = os.statvfs(disk_dir)
        disk = (st.f_blocks - st.f_bfree) * st.f_frsize
    except OSError:
        disk = 0
    point = (int(now), max(0.0, cpu_pct), stats.mem_bytes, disk)
    for name, (span, keep) in METRIC_RANGES.items():
        ring = sb.metrics.setdefault(name, deque(maxlen=keep))
        # Coarser ranges keep one point per span/keep seconds.
        if not ring or point[0] - ring[-1][0] >= span / keep or name == "10m":
            ring.append(point)


def points(sb: HostSandbox, range_: str) -> list[MetricPoint]:
    """The points of one range (``10m`` when empty) still inside it."""
    key = range_ or "10m"
    if key not in METRIC_RANGES:
        raise InvalidRequest(f"invalid range {range_!r} (10m, 2h or 24h)")
    cutoff = clock.time_s() - METRIC_RANGES[key][0]
    return [p for p in sb.metrics.get(key, ()) if p[0] >= cutoff]


def warm_pool_families(
    pools: Sequence[tuple[str, int, int]], claims: int, cold: Mapping[str, int]
) -> Iterator[Metric]:
    """The warm pools' families (warm_pool.py): per pool (template, target, ready), the creates
    that claimed a member and those that went cold, by reason."""
    target = GaugeMetricFamily(
        "warren_agent_warm_pool_target",
        "Ready sandboxes this agent keeps, per template.",
        labels=["template"],
    )
    ready = GaugeMetricFamily(
        "warren_agent_warm_pool_ready", "Warm-pool sandboxes ready now, per template.", labels=["template"]
    )
    for name, t, r in pools:
        target.add_metric([name], t)
        ready.add_metric([name], r)
    yield target
    yield ready
    yield CounterMetricFamily(
        "warren_agent_warm_pool_claims", "Creates served by a warm-pool sandbox.", value=claims
    )
    went_cold = CounterMetricFamily(
        "warren_agent_cold_creates",
        "Creates that took the cold path while this agent has warm pools, by reason "
        "(no_pool: no pool of that template; pool_empty; claim_failed; team_share: past its team's share).",
        labels=["reason"],
    )
    for reason, n in sorted(cold.items()):
        went_cold.add_metric([reason], n)
    yield went_cold
