"""Host selection for new sandboxes (docs/spec.md §4.2 as amended by docs/design.md §4).

Eligible hosts: ``online`` with a non-empty address. A BYOC team uses only its own ``byoc``
hosts and never falls back to platform hosts; every other team uses only ``regular`` hosts.
Capacity: given the new sandbox's reservation, an eligible host is a candidate only while its
active (not stopped or errored) sandboxes' vCPUs and memory, and its running template build
steps' (``template_builds.reserved_*``; ``warren_host_usage``, migration 0020), plus the new one
fit its reported ``cpu_cores`` and ``memory_mb`` times the operator's overcommit ratios (a host
that reported 0 is not bounded on that resource). Memory is counted at each sandbox's footprint
(``warren.footprint``, migration 0021: its limit plus what its runtime lets it hold outside it),
the new one's at the runtime it gets on that host (:func:`runtime_on`). A build step asks for a
host the same way (``services/template_build_host.py``). A sandbox's disk is a tmpfs charged to
its memory limit, so it is counted inside ``memory_mb``, not again. This read only narrows the
choice; the pending insert re-checks the fit under the host's row lock
(``warren_reserve_sandbox``), and the create tries another host when it lost the race.
Eligible hosts but none with room: 503 ``no_capacity``; no eligible host at all: 503
``no_hosts_available``.

Disk: a host whose last heartbeat reported less free space in its data directory than
``WARREN_HOST_MIN_FREE_DISK_MB`` (or that it cannot write there: 0) is skipped, so a full disk
stops new sandboxes at its next heartbeat instead of failing their creates; a host that never
reported is not. All eligible hosts short of disk: 503 ``no_capacity``, saying so.

Near the layers: for a template made of store layers, the hosts with room that already hold the
most of its bytes (``host_layers``) are preferred, so a sandbox starts without fetching; the
rotation goes on among those equally good. Each candidate row then says which layers the host
lacks (``missing``), for the create to push before its RPC.

Runtimes: a create that names a runtime (or whose CP sets one, ``WARREN_DEFAULT_RUNTIME``) goes to
hosts offering it only (``hosts.runtimes``, as it reported at registration and with its last
heartbeat; docs/hosts.md). Eligible hosts but none offering it: 503 ``no_hosts_available`` naming
the runtime and what the online hosts offer. A create that names none (``Placement.runtime``
empty: the CP's default, "host") may go to any host and runs on that host's default runtime
(:func:`runtime_on`: ``hosts.default_runtime`` as its agent reports it; runc for an agent that
never said). The agent has the last word: one asked for a runtime it lacks refuses
(FAILED_PRECONDITION).

Warm pools (issue 17): among the hosts with room, those that reported a ready sandbox of the
create's template and runtime in a warm pool (``hosts.warm_pools``, less the creates this process
sent there since that report; :func:`pool_ready`) are preferred, so the create claims one instead
of building a sandbox; the rotation goes on among them.

``RoundRobinScheduler`` keeps one counter per pool (one per BYOC team, one for the platform), so
interleaved requests from different teams do not skew each other's rotation. The counters are
per CP process: with several replicas each rotates on its own, which still spreads load.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from warren.config import RUNTIMES
from warren.cp.db.engine import Conn, fetch
from warren.cp.db.queries import hosts as q
from warren.cp.telemetry import SCHEDULER_DECISIONS
from warren.errors import ServiceUnavailable
from warren.footprint import footprint_mb

Host = Mapping[Any, Any]
# The counter's child for every placed create, looked up once (``labels`` takes a lock and
# checks the label values on each call).
_PLACED = SCHEDULER_DECISIONS.labels("placed")


@dataclass(frozen=True)
class Overcommit:
    """Operator-set ratios of what a host may be promised to what it has."""

    cpu: float = 4.0
    memory: float = 1.0
    disk: float = 1.0


@dataclass(frozen=True)
class Reservation:
    """What a new sandbox takes from its host."""

    vcpus: int
    memory_mb: int  # its limit (what team quotas count)
    overcommit: Overcommit

    def footprint_mb(self, runtime: str) -> int:
        """The host memory it takes on ``runtime`` (its limit and what it holds outside it)."""
        return footprint_mb(self.memory_mb, runtime)


@dataclass(frozen=True)
class Placement:
    """What a create asks of the scheduler besides its team; each field narrows or orders the
    choice among the team's eligible hosts offering ``runtime``."""

    # The one host allowed: the one holding a snapshot taken before the template store, whose
    # files live only there; it must still be eligible for the team.
    required_host: uuid.UUID | None = None
    runtime: str = ""  # "": each host's own default (runtime_on)
    need: Reservation | None = None  # only hosts with room for it
    # The template's store layers: prefer hosts holding most of their bytes (the row says what
    # the host is ``missing``).
    layers: Sequence[str] = ()
    avoid: Collection[uuid.UUID] = ()  # hosts this create could not reach (it tries another)
    # The create's template reference: prefer hosts with a ready sandbox of it in a warm pool.
    template: str = ""
    # The team's eligible hosts as the caller read them (``eligible_hosts``' rows, for
    # ``layers``; the create reads them with its template); None: read here.
    candidates: Sequence[Host] | None = None


ANY_HOST = Placement()


class Scheduler(Protocol):
    async def select_host(
        self, conn: Conn, team_id: uuid.UUID, is_byoc: bool, want: Placement = ANY_HOST
    ) -> Host:
        """Pick the host for a new sandbox of ``team_id`` as ``want`` says; raise
        ServiceUnavailable if none."""
        ...


async def eligible_hosts(
    conn: Conn, team_id: uuid.UUID, is_byoc: bool, layers: Sequence[str] = ()
) -> list[Host]:
    """The team's eligible hosts, each with what its sandboxes take (for :func:`fits`) and, for
    ``layers``, ``held_bytes`` and ``missing``. Runs on whichever connection the caller holds."""
    return await fetch(conn, q.ELIGIBLE, team_id, is_byoc, list(layers))


def fits(h: Host, need: Reservation | None, runtime: str = "") -> bool:
    """Whether the host has room for ``need`` (always, without one) on ``runtime`` ("": the
    host's default): its active sandboxes' and build steps' vCPUs and memory footprints
    (``used_*``) plus the new one's within what it reported times the overcommit ratios (0
    reported: not bounded). The same rule as warren_reserve_sandbox and warren_reserve_build,
    which have the last word."""
    if need is None:
        return True
    oc = need.overcommit
    cores, memory = h["cpu_cores"], h["memory_mb"]
    return (cores <= 0 or h["used_vcpus"] + need.vcpus <= cores * oc.cpu) and (
        memory <= 0 or h["used_memory_mb"] + need.footprint_mb(runtime_on(h, runtime)) <= memory * oc.memory
    )


class RoundRobinScheduler:
    def __init__(self, *, min_free_disk_mb: int = 0) -> None:
        self.min_free_disk = min_free_disk_mb << 20
        # itertools.count is advanced without an await in between, so concurrent creates in one
        # event loop each get their own slot.
        self._counters: dict[uuid.UUID | None, itertools.count[int]] = {}
        # Warm pools: (host, template, runtime) -> (the host's heartbeat time, creates sent there
        # since); only for hosts that reported ready sandboxes, so at most hosts x 32 entries.
        self._taken: dict[tuple[uuid.UUID, str, str], tuple[Any, int]] = {}

    async def select_host(
        self, conn: Conn, team_id: uuid.UUID, is_byoc: bool, want: Placement = ANY_HOST
    ) -> Host:
        candidates = want.candidates
        if candidates is None:
            candidates = await eligible_hosts(conn, team_id, is_byoc, want.layers)
        hosts = [h for h in candidates if h["id"] not in want.avoid]
        return self._choose(hosts, team_id, is_byoc, want)

    def _choose(self, candidates: list[Host], team_id: uuid.UUID, is_byoc: bool, want: Placement) -> Host:
        need, template = want.need, want.template
        if want.required_host is not None:
            candidates = [h for h in candidates if h["id"] == want.required_host]
            if not candidates:
                raise ServiceUnavailable(
                    "the host holding this snapshot's files is not online (it was taken before the "
                    "template store, so only that host has it); try again when it is back",
                    code="snapshot_host_unavailable",
                )
        candidates = _offering(candidates, want.runtime, is_byoc)
        candidates = with_free_disk(candidates, self.min_free_disk)
        candidates = [h for h in candidates if fits(h, need, want.runtime)]
        if not candidates:
            raise no_capacity(need, want.runtime)
        warm = [h for h in candidates if template and self._warm_left(h, template, want.runtime) > 0]
        if warm:
            candidates = warm  # they hold the template's layers too: their members run them
        elif want.layers:
            most = max(h["held_bytes"] for h in candidates)
            candidates = [h for h in candidates if h["held_bytes"] == most]
        key = team_id if is_byoc else None
        counter = self._counters.setdefault(key, itertools.count())
        _PLACED.inc()
        chosen = candidates[next(counter) % len(candidates)]
        if warm:
            self._took_warm(chosen, template, want.runtime)
        return chosen

    def _warm_left(self, h: Host, template: str, runtime: str) -> int:
        """The ready sandboxes of ``template`` on the create's runtime the host reported with
        its last heartbeat, less those this process has sent creates for since (the pool
        refills between reports)."""
        runtime = runtime_on(h, runtime)
        ready = pool_ready(h, template, runtime)
        if ready <= 0:
            return 0
        seen, taken = self._taken.get((h["id"], template, runtime), (None, 0))
        return ready - (taken if seen == h["last_heartbeat_at"] else 0)

    def _took_warm(self, h: Host, template: str, runtime: str) -> None:
        key = (h["id"], template, runtime_on(h, runtime))
        seen, taken = self._taken.get(key, (None, 0))
        self._taken[key] = (h["last_heartbeat_at"], (taken if seen == h["last_heartbeat_at"] else 0) + 1)


# What a host that never reported its default runs a create naming no runtime on: agents from
# before session 13 were runc unless told otherwise.
LEGACY_DEFAULT = "runc"


def runtime_on(h: Host, runtime: str) -> str:
    """The runtime a create runs on at host ``h``: the one it names (or the CP's setting), else
    the host's default as its agent reported it."""
    return runtime or h.get("default_runtime") or LEGACY_DEFAULT


def pool_ready(h: Host, template: str, runtime: str = "") -> int:
    """How many ready sandboxes of ``template`` on ``runtime`` ("": the host's default) the host
    reported in its warm pools (``hosts.warm_pools``: ``[{"template", "target", "ready"}]``;
    docs/hosts.md). A pool's name is its template, with ``@runtime`` when it is not the host's
    default runtime's (``minimal@runc``); both names may hold one runtime's pools."""
    pools = h.get("warm_pools")
    if isinstance(pools, str):  # the raw asyncpg connection hands JSONB over as text
        pools = json.loads(pools)
    runtime = runtime_on(h, runtime)
    names = {f"{template}@{runtime}"} | ({template} if runtime == runtime_on(h, "") else set())
    return sum(int(e.get("ready") or 0) for e in pools or () if e.get("template") in names)


def with_free_disk(candidates: list[Host], min_bytes: int) -> list[Host]:
    """The hosts with at least ``min_bytes`` free on their data disk (or that never reported it);
    503 ``no_capacity`` when every candidate is short."""
    if min_bytes <= 0 or not candidates:
        return candidates
    roomy = [h for h in candidates if h.get("disk_free_bytes") is None or h["disk_free_bytes"] >= min_bytes]
    if roomy:
        return roomy
    SCHEDULER_DECISIONS.labels("refused_capacity").inc()
    msg = (
        f"no host has room for this sandbox: the eligible hosts are short of free disk (under "
        f"{min_bytes >> 20} MiB); retry later"
    )
    raise ServiceUnavailable(msg, code="no_capacity")


def _offering(candidates: list[Host], runtime: str, is_byoc: bool) -> list[Host]:
    """The hosts offering ``runtime`` (all of them for "", each its own default); 503
    ``no_hosts_available`` naming it when there are none."""
    offering = [h for h in candidates if not runtime or runtime in (h["runtimes"] or ())]
    if offering:
        return offering
    msg = "no online BYOC hosts available for team" if is_byoc else "no online platform hosts available"
    if runtime:
        msg += f" with the {runtime} runtime"
        if offered := [r for r in RUNTIMES if any(r in (h["runtimes"] or ()) for h in candidates)]:
            msg += f" (the online ones offer {', '.join(offered)})"
    SCHEDULER_DECISIONS.labels("refused_no_hosts").inc()
    raise ServiceUnavailable(msg, code="no_hosts_available")


def no_capacity(need: Reservation | None, runtime: str = "") -> ServiceUnavailable:
    what = ""
    if need:
        # "" (each host's default): runc's rule, the one every runtime but gVisor has.
        held = need.footprint_mb(runtime or "runc")
        what = f" ({need.vcpus} vCPUs, {need.memory_mb} MiB; {held} MiB of host memory in all)"
    SCHEDULER_DECISIONS.labels("refused_capacity").inc()  # every capacity refusal is built here
    return ServiceUnavailable(
        f"no host has room for this sandbox{what}; retry later or ask for a smaller one",
        code="no_capacity",
    )
