"""Placing a new sandbox (for ``sandboxes.create``): a host with room and the ``pending``
row there (:func:`reserve`), then that host's agent asked to make it (:func:`place`): the
template's missing layers pushed first, the runtime recorded, a host that cannot be reached at
all left for another. No database connection is held across an agent RPC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db import end_reasons
from warren.cp.db.engine import driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.hosts.client_pool import DEFAULT_TIMEOUT_S, HostClient, HostClientPool
from warren.cp.hosts.scheduler import (
    Host,
    Overcommit,
    Placement,
    Reservation,
    Scheduler,
    no_capacity,
    runtime_on,
)
from warren.cp.services import egress, egress_rules, layers, limits
from warren.cp.services.context import no_team
from warren.cp.store import LayerStore
from warren.errors import AgentError, ServiceUnavailable, WarrenError
from warren.rpc import hostagent_pb2 as pb

if TYPE_CHECKING:
    from warren.cp.services.sandboxes import CreateParams

log = logging.getLogger("warren.sandboxes")

# Host choices a reservation makes when its host left `online` or filled up after it was chosen.
_CREATE_ATTEMPTS = 3
# Hosts a create tries when the chosen one cannot be reached (connection never made).
_HOST_ATTEMPTS = 3
# gRPC's words for a call that never left the CP: no connection to the host could be made.
_NOT_CONNECTED = ("failed to connect", "connection refused", "no route to host")


def never_reached(e: AgentError) -> bool:
    """Whether the agent cannot have received the call: UNAVAILABLE before any connection."""
    return e.rpc_code == "UNAVAILABLE" and any(w in e.message.lower() for w in _NOT_CONNECTED)


@dataclass(frozen=True)
class Plan:
    """What a create settled before choosing a host: the template, the size, the quotas."""

    template: str
    resolved: Mapping[str, Any]  # q.RESOLVE's first row: the team, its limits and the template
    shape: limits.Shape
    quotas: limits.Quotas
    # The template as store layers; None for plain `minimal` and pre-store snapshots, which
    # hosts hold themselves.
    chain: pb.TemplateChain | None = None
    # The runtime tier the sandbox runs on (hosts offering it only); "": its host's default
    # (scheduler.runtime_on), known once the host is chosen.
    runtime: str = ""
    # The control-plane replica making the create, recorded on its pending row (its lease tells
    # the host monitor whether anyone is left to finish it); None: not recorded.
    replica: uuid.UUID | None = None
    # The team's eligible hosts, read with the template (q.RESOLVE's rows): the first choice of
    # a host needs no statement of its own.
    hosts: Sequence[Host] = ()


Placed = tuple[Host, HostClient, uuid.UUID, pb.CreateSandboxRequest, pb.CreateSandboxResponse]


async def place(
    engine: AsyncEngine,
    pool: HostClientPool,
    scheduler: Scheduler,
    settings: Settings,
    team_uuid: uuid.UUID,
    plan: Plan,
    params: CreateParams,
    store: LayerStore | None,
    timings: dict[str, float] | None,
    first: tuple[uuid.UUID, Host],
    owner_account: uuid.UUID | None = None,
) -> Placed:
    """Have the agent of the ``first`` reservation (the pending row's id and its host) make the
    sandbox. A host that cannot be reached at all (no connection made), or that had no layer
    install turn within the create's wait (``layers.LayerInstallBusy``), is left for another
    eligible one, with a new pending row; up to ``_HOST_ATTEMPTS`` hosts. When no other host is
    left, the client hears the first failure. ``owner_account``: the team's owning account, whose
    share of the agent's per-tenant limits the sandbox takes (none: the team's)."""
    avoid: list[uuid.UUID] = []
    unreached: WarrenError | None = None
    reserved: tuple[uuid.UUID, Host] | None = first
    turn_until: float | None = None  # a busy host's wait ended: later hosts share what is left
    started = asyncio.get_running_loop().time()
    while True:
        if reserved is not None:
            (sb_uuid, host), reserved = reserved, None
        else:
            sb_uuid = ids.new_uuid()
            try:
                async with driver(engine) as conn:
                    host = await reserve(conn, scheduler, settings, team_uuid, plan, sb_uuid, params, avoid)
            except ServiceUnavailable:
                if unreached is None:
                    raise
                raise unreached from None
        client = pool.get(host)
        req = _create_request(settings, sb_uuid, team_uuid, plan, params, runtime_on(host, plan.runtime))
        req.owner_account_id = str(owner_account or "")
        wait = layers.create_wait(settings, turn_until)
        fetch = layers.HostFetch(
            engine, store, client, host["id"], plan.chain, host.get("missing"), team=team_uuid, wait=wait,
            account=owner_account,
        )  # fmt: skip
        try:
            resp = await _call_agent(engine, client, req, sb_uuid, host, timings, fetch)
        except layers.LayerInstallBusy as e:
            if e.team_full or len(avoid) + 1 >= _HOST_ATTEMPTS:
                raise  # the team's own count is full: another host would not change it
            unreached = unreached or e
            avoid.append(host["id"])
            turn_until = turn_until or started + settings.layer_turn_wait_s
            log.info("sandbox create: host %s had no install turn, trying another", ids.host_id(host["id"]))
            continue
        except AgentError as e:
            # The row is `error` already. Only a connection never made is tried elsewhere: once
            # the agent may have the request it may make the sandbox, and a second one must not
            # be made for the same create (the monitor destroys a sandbox whose record is final).
            if not never_reached(e) or len(avoid) + 1 >= _HOST_ATTEMPTS:
                raise
            unreached = e
            avoid.append(host["id"])
            log.warning("sandbox create: host %s unreachable, trying another: %s", ids.host_id(host["id"]), e)
            continue
        return host, client, sb_uuid, req, resp


async def reserve(
    conn: asyncpg.Connection,
    scheduler: Scheduler,
    settings: Settings,
    team_uuid: uuid.UUID,
    plan: Plan,
    sb_uuid: uuid.UUID,
    params: CreateParams,
    avoid: Sequence[uuid.UUID] = (),
) -> Host:
    """Choose a host with room (not one of ``avoid``) and insert the pending row there, with
    its runtime and egress rules (quotas and capacity checked under row locks); 429 past a
    quota, 503 when no host has room. The first choice is among ``plan.hosts``, read with the
    template; a choice again (another host, or one lost to a race) reads them afresh."""
    r, shape, quotas = plan.resolved, plan.shape, plan.quotas
    oc = Overcommit(settings.overcommit_cpu, settings.overcommit_memory, settings.overcommit_disk)
    need = Reservation(shape.vcpus, shape.memory_mb, oc)
    outcome = ""
    # A snapshot taken before the template store lives on the host that took it: only that
    # host can start it. One made of store layers starts anywhere, preferably near its layers.
    pinned = r["template_host_id"] if plan.chain is None and r["template_type"] == "snapshot" else None
    chain_layers = list(plan.chain.layers) if plan.chain is not None else []
    rules = json.dumps(params.network.to_json()) if not params.network.empty else None
    for attempt in range(_CREATE_ATTEMPTS):
        want = Placement(
            required_host=pinned,
            runtime=plan.runtime,
            need=need,
            layers=chain_layers,
            avoid=avoid,
            template=plan.template,
            candidates=plan.hosts if attempt == 0 and not avoid else None,
        )
        host = await scheduler.select_host(conn, team_uuid, bool(r["is_byoc"]), want=want)
        res = await conn.fetchrow(
            q.RESERVE,
            sb_uuid, team_uuid, host["id"], plan.template, shape.vcpus, shape.memory_mb,
            shape.timeout_sec, shape.disk_size_mb, params.internet, clock.now(), r["template_id"],
            r["template_team_id"], quotas.sandboxes, quotas.vcpus, quotas.memory_mb, oc.cpu, oc.memory,
            plan.replica, runtime_on(host, plan.runtime), rules,
        )  # fmt: skip
        outcome = res["outcome"]
        if outcome == "ok":
            return host
        if outcome == "no_team":
            raise no_team()
        if outcome.startswith("quota_"):
            raise limits.reserve_refusal(outcome, quotas, res, shape)
        # The host left `online` (being deleted, or just marked unreachable), or filled up, after
        # it was chosen: choose again.
        log.info("sandbox create: host %s %s, rescheduling", ids.host_id(host["id"]), outcome)
    if outcome == "no_capacity":
        raise no_capacity(need, plan.runtime)
    raise ServiceUnavailable("no online host could take the sandbox; retry", code="no_hosts_available")


def _create_request(
    settings: Settings,
    sb_uuid: uuid.UUID,
    team_uuid: uuid.UUID,
    plan: Plan,
    params: CreateParams,
    runtime: str,
) -> pb.CreateSandboxRequest:
    r, shape = plan.resolved, plan.shape
    return pb.CreateSandboxRequest(
        sandbox_id=ids.sandbox_id(sb_uuid),
        template=plan.template,
        vcpus=shape.vcpus,
        memory_mb=shape.memory_mb,
        timeout_sec=shape.timeout_sec,
        disk_size_mb=shape.disk_size_mb,
        team_id=str(r["template_team_id"]),
        template_id=str(r["template_id"]),
        internet=params.internet,
        env=params.env or {},
        egress_allow=egress.team_cidrs(egress.catalog_of(settings), r["egress_allow"]),
        chain=plan.chain,
        runtime=runtime,
        egress=egress_rules.to_pb(params.network) if not params.network.empty else None,
        owner_team_id=str(team_uuid),
    )


async def _call_agent(
    engine: AsyncEngine,
    client: HostClient,
    req: pb.CreateSandboxRequest,
    sb_uuid: uuid.UUID,
    host: Host,
    timings: dict[str, float] | None,
    fetch: layers.HostFetch,
) -> pb.CreateSandboxResponse:
    """The template's missing layers pushed to the host, then the CreateSandbox RPC; when either
    fails, the pending row becomes ``error``."""
    try:
        if fetch.missing:
            await fetch.bring(fetch.missing)
        t_rpc = time.perf_counter()
        try:
            resp: pb.CreateSandboxResponse = await client.stub.CreateSandbox(req, timeout=DEFAULT_TIMEOUT_S)
        except AgentError as e:
            if not fetch.wants_retry(e):
                raise
            # host_layers said it had them, the host disagrees: push and try once more.
            log.info("sandbox create: host %s lacks layers: %s", ids.host_id(host["id"]), e.message)
            await fetch.bring(list(req.chain.layers))
            t_rpc = time.perf_counter()
            resp = await client.stub.CreateSandbox(req, timeout=DEFAULT_TIMEOUT_S)
        if timings is not None:
            timings["agent"] = (time.perf_counter() - t_rpc) * 1000
    except WarrenError as e:
        async with driver(engine) as conn:
            await conn.execute(q.MARK_FAILED, sb_uuid, clock.now(), end_reasons.CREATE_FAILED)
        log.warning(
            "sandbox create failed sandbox=%s host=%s: %s", req.sandbox_id, ids.host_id(host["id"]), e
        )
        raise
    return resp
