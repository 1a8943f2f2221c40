"""Host selection for new sandboxes (docs/spec.md §4.2 as amended by docs/design.md §4).

Eligible hosts: ``online`` with a non-empty address. A BYOC team uses only its own ``byoc``
hosts and never falls back to platform hosts; every other team uses only ``regular`` hosts.
Capacity: given the new sandbox's reservation, an eligible host is a candidate only while its
active (not stopped or errored) sandboxes' vCPUs and memory plus the new one fit its reported
``cpu_cores`` and ``memory_mb`` times the operator's overcommit ratios (a host that reported 0
is not bounded on that resource). A sandbox's disk is a tmpfs charged to its memory limit, so
it is counted inside ``memory_mb``, not again. This read only narrows the choice; the pending
insert re-checks the fit under the host's row lock (``warren_reserve_sandbox``), and the
create tries another host when it lost the race. Eligible hosts but none with room: 503
``no_capacity``; no eligible host at all: 503 ``no_hosts_available``.

Near the layers: for a template made of store layers, the hosts with room that already hold the
most of its bytes (``host_layers``) are preferred, so a sandbox starts without fetching; the
rotation goes on among those equally good. Each candidate row then says which layers the host
lacks (``missing``), for the create to push before its RPC.

``RoundRobinScheduler`` keeps one counter per pool (one per BYOC team, one for the platform), so
interleaved requests from different teams do not skew each other's rotation. The counters are
per CP process: with several replicas each rotates on its own, which still spreads load.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from warren.cp.db.engine import Conn, fetch
from warren.cp.db.queries import hosts as q
from warren.cp.telemetry import SCHEDULER_DECISIONS
from warren.errors import ServiceUnavailable

Host = Mapping[Any, Any]


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
    memory_mb: int
    overcommit: Overcommit


class Scheduler(Protocol):
    async def select_host(
        self,
        conn: Conn,
        team_id: uuid.UUID,
        is_byoc: bool,
        *,
        required_host: uuid.UUID | None = None,
        need: Reservation | None = None,
        layers: Sequence[str] = (),
        avoid: Collection[uuid.UUID] = (),
    ) -> Host:
        """Pick the host for a new sandbox of ``team_id``; raise ServiceUnavailable if none.

        ``required_host`` narrows the choice to one host (the one holding a snapshot taken
        before the template store, whose files live only there); it must still be eligible for
        the team. ``need``: only hosts with room for it. ``layers``: the template's store layers
        (prefer hosts holding most of their bytes; the row says what the host is ``missing``).
        ``avoid``: hosts this create could not reach (it tries another)."""
        ...


async def eligible_hosts(
    conn: Conn,
    team_id: uuid.UUID,
    is_byoc: bool,
    need: Reservation | None = None,
    layers: Sequence[str] = (),
) -> list[Host]:
    """The team's eligible hosts, each with ``fits``: room for ``need`` (always, without one),
    and with ``layers``, ``held_bytes`` and ``missing``. Runs on every create, on whichever
    connection the caller holds."""
    if need is None:
        need = Reservation(0, 0, Overcommit())
    oc = need.overcommit
    args = (team_id, is_byoc, need.vcpus, need.memory_mb, oc.cpu, oc.memory)
    if layers:
        return await fetch(conn, q.ELIGIBLE_WITH_LAYERS, *args, list(layers))
    return await fetch(conn, q.ELIGIBLE, *args)


class RoundRobinScheduler:
    def __init__(self) -> None:
        # itertools.count is advanced without an await in between, so concurrent creates in one
        # event loop each get their own slot.
        self._counters: dict[uuid.UUID | None, itertools.count[int]] = {}

    async def select_host(
        self,
        conn: Conn,
        team_id: uuid.UUID,
        is_byoc: bool,
        *,
        required_host: uuid.UUID | None = None,
        need: Reservation | None = None,
        layers: Sequence[str] = (),
        avoid: Collection[uuid.UUID] = (),
    ) -> Host:
        candidates = await eligible_hosts(conn, team_id, is_byoc, need, layers)
        if avoid:
            candidates = [h for h in candidates if h["id"] not in avoid]
        if required_host is not None:
            candidates = [h for h in candidates if h["id"] == required_host]
            if not candidates:
                raise ServiceUnavailable(
                    "the host holding this snapshot's files is not online (it was taken before the "
                    "template store, so only that host has it); try again when it is back",
                    code="snapshot_host_unavailable",
                )
        if not candidates:
            msg = (
                "no online BYOC hosts available for team" if is_byoc else "no online platform hosts available"
            )
            SCHEDULER_DECISIONS.labels("refused_no_hosts").inc()
            raise ServiceUnavailable(msg, code="no_hosts_available")
        candidates = [h for h in candidates if h["fits"]]
        if not candidates:
            raise no_capacity(need)
        if layers:
            most = max(h["held_bytes"] for h in candidates)
            candidates = [h for h in candidates if h["held_bytes"] == most]
        key = team_id if is_byoc else None
        counter = self._counters.setdefault(key, itertools.count())
        SCHEDULER_DECISIONS.labels("placed").inc()
        return candidates[next(counter) % len(candidates)]


def no_capacity(need: Reservation | None) -> ServiceUnavailable:
    what = f" ({need.vcpus} vCPUs, {need.memory_mb} MiB)" if need else ""
    SCHEDULER_DECISIONS.labels("refused_capacity").inc()  # every capacity refusal is built here
    return ServiceUnavailable(
        f"no host has room for this sandbox{what}; retry later or ask for a smaller one",
        code="no_capacity",
    )
