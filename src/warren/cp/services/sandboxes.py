"""Sandbox lifecycle (docs/spec.md §2.5 as amended by docs/design.md §4): create (scheduled onto a
host), list,
get, destroy, pause, resume, ping, plus the team-delete cleanup (docs/spec.md §7.3); and :func:`find`,
the one lookup of a team's sandbox and its host behind every per-sandbox verb (exec, files,
metrics and snapshots reach it through ``sandbox_access``).

No database connection is held while an agent RPC runs: a create resolves, schedules and
inserts the ``pending`` row in single statements (each commits on its own), calls the agent,
then marks the row ``running`` in one statement (the host's choice and the agent's call are
sandbox_placement.py's). Status changes are conditional
(``WHERE status = <expected>``) so a concurrent monitor pass or a second request can never be
overwritten by a stale decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import HOST_RUNTIME, Settings
from warren.cp.db import end_reasons
from warren.cp.db.engine import autocommit, driver
from warren.cp.db.queries import sandboxes as q
from warren.cp.db.tables import hosts
from warren.cp.hosts.agent_client import answered_disk_mb, answered_ip
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.services import Timestamp, audit, layers, limits, replica_lease
from warren.cp.services.context import AuthContext, no_team, require_team
from warren.cp.services.sandbox_placement import Plan, place, reserve
from warren.cp.services.template_spec import TEMPLATE_REF_RE
from warren.cp.services.traffic_tokens import new_traffic_token
from warren.cp.store import LayerStore
from warren.egress_rules import EgressRules
from warren.errors import (
    AgentError,
    InternalError,
    InvalidRequest,
    InvalidState,
    NotFound,
    ServiceUnavailable,
)
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.sandboxes")

# Hidden from the list (docs/spec.md §2.5).
_HIDDEN = ("stopped", "error")


class SandboxView(BaseModel):
    """A sandbox as the API and the dashboard show it (the services' view of a ``sandboxes`` row)."""

    # The OpenAPI document keeps the public schema name ``Sandbox`` (the SDK has its own class).
    __qualname__ = "Sandbox"

    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int
    internet: bool
    # The runtime tier (docs/api.md §2): runc, crun or gvisor.
    runtime: str = "runc"
    # How a paused sandbox is paused: "memory" (frozen in place) or "disk" (checkpointed, its
    # memory freed); absent unless paused.
    paused_state: Literal["memory", "disk"] | None = None
    guest_ip: str | None = None
    host_ip: str | None = None
    created_at: Timestamp
    started_at: Timestamp | None = None
    last_active_at: Timestamp | None = None
    last_updated: Timestamp
    # Preview URLs (docs/networking.md §3): the traffic token is in the create response only.
    traffic_token: str | None = None
    public_ports: list[int] | None = None
    auto_resume: bool | None = None
    # Why a stopped or errored sandbox ended (docs/api.md §2, cp/db/end_reasons.py); null while
    # it is active, and for one that ended before the platform recorded it.
    end_reason: str | None = None


def sandbox_model(row: RowMapping | asyncpg.Record | Mapping[str, Any]) -> SandboxView:
    return SandboxView(
        id=ids.sandbox_id(row["id"]),
        status=row["status"],
        template=row["template"],
        vcpus=row["vcpus"],
        memory_mb=row["memory_mb"],
        disk_size_mb=row["disk_size_mb"],
        timeout_sec=row["timeout_sec"],
        internet=row["internet"],
        runtime=row.get("runtime") or "runc",
        paused_state=paused_state_of(row),
        guest_ip=row["guest_ip"] or None,
        host_ip=row["host_ip"] or None,
        created_at=row["created_at"],
        started_at=row["started_at"],
        last_active_at=row["last_active_at"],
        last_updated=row["last_updated"],
        public_ports=row.get("public_ports"),
        auto_resume=row.get("auto_resume"),
        end_reason=row.get("end_reason"),
    )


def paused_state_of(row: RowMapping | asyncpg.Record | Mapping[str, Any]) -> Literal["memory", "disk"] | None:
    """A paused sandbox's state: "disk" when its agent checkpointed it, else "memory" (a freeze,
    also what a record from before the runtime tiers means); None unless paused."""
    if row["status"] != "paused":
        return None
    return "disk" if row.get("paused_state") == "disk" else "memory"


@dataclass(frozen=True)
class CreateParams:
    template: str = "minimal"
    vcpus: int = 0
    memory_mb: int = 0
    disk_size_mb: int = 0
    timeout_sec: int = 0
    internet: bool = True
    env: dict[str, str] | None = None
    network: EgressRules = field(default_factory=EgressRules)  # checked (services/egress_rules.py)
    # E2B's create (docs/e2b.md §2): client metadata (checked by services/sandbox_metadata.py),
    # an absolute lifetime in seconds (then no inactivity timeout: timeout_sec is 0) ending in
    # `on_end` ('kill' | 'pause'), and every port public without the traffic token.
    metadata: dict[str, str] | None = None
    lifetime_s: int | None = None
    on_end: str = "kill"
    all_ports_public: bool = False
    # The runtime tier; None: the platform's default (settings.default_runtime).
    runtime: str | None = None


# ------------------------------------------------------------------------------------ lookup


@dataclass(frozen=True)
class OnHost:
    """A team's sandbox row as a lookup read it, with its host's row id and address (``h_id``,
    ``h_address``): what every lookup's columns hold."""

    row: Mapping[str, Any]

    @property
    def sb_uuid(self) -> uuid.UUID:
        sb_uuid: uuid.UUID = self.row["id"]
        return sb_uuid

    @property
    def host_id(self) -> uuid.UUID | None:
        """``sandboxes.host_id`` (the row may outlive its host)."""
        host_uuid: uuid.UUID | None = self.row["host_id"]
        return host_uuid

    @property
    def host_known(self) -> bool:
        """Whether the host's row still exists."""
        return self.row["h_id"] is not None

    @property
    def host_address(self) -> str:
        return str(self.row["h_address"] or "")

    def host_client(self, pool: HostClientPool) -> HostClient:
        """The host's agent client (503 ``host_unavailable`` without an address)."""
        return pool.get_for(self.row["h_id"], self.host_address)

    def require_host(self) -> None:
        if not self.host_known:
            raise NotFound("host not found for sandbox")


@dataclass(frozen=True)
class Found(OnHost):
    """A team's sandbox as :func:`find` read it (every column), with its view."""

    sandbox: SandboxView


@dataclass(frozen=True)
class Brief(OnHost):
    """A team's sandbox as :func:`find_brief` read it: ``q.LOOKUP_BRIEF``'s few columns (id,
    status, ``last_active_at``, host), for the unary exec."""

    @property
    def sid(self) -> str:
        return ids.sandbox_id(self.sb_uuid)

    @property
    def last_active_at(self) -> datetime | None:
        seen: datetime | None = self.row["last_active_at"]
        return seen

    def agent(self, pool: HostClientPool) -> HostClient:
        """The host's agent client; 503 ``host_unavailable`` when the host's row is gone or has
        no address (``sandbox_access.Target.client``'s answer)."""
        if not self.host_known:
            raise ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
        return self.host_client(pool)


def check_state(status: str, states: Iterable[str]) -> None:
    """409 ``invalid_state`` unless ``status`` is one of ``states``."""
    allowed = tuple(states)
    if status not in allowed:
        if len(allowed) == 1:
            raise InvalidState(f"sandbox is not {allowed[0]} (status: {status})")
        raise InvalidState(f"sandbox must be {' or '.join(allowed)} (status: {status})")


async def find(
    engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, *, states: Iterable[str] | None = None
) -> Found:
    """The caller's team's sandbox and its host, in one statement: 403 ``no_team``, 400 for a
    malformed id, 404 for an unknown id or another team's sandbox (the same answer), then 409
    unless its status is one of ``states`` (any status when None)."""
    row = await _lookup(engine, ctx, sandbox_id, states, q.LOOKUP)
    return Found(row, sandbox_model(row))


async def find_brief(
    engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, *, states: Iterable[str] | None = None
) -> Brief:
    """:func:`find` (the same rules and answers) reading only what the unary exec needs: every
    column more is decoded on every exec, and the view is not built."""
    return Brief(await _lookup(engine, ctx, sandbox_id, states, q.LOOKUP_BRIEF))


async def _lookup(
    engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, states: Iterable[str] | None, query: str
) -> asyncpg.Record:
    team_uuid = require_team(ctx)
    sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    if ctx.only_sandbox is not None and ctx.only_sandbox != sandbox_id:
        raise NotFound("sandbox not found")  # a sandbox's token reaches that sandbox only
    async with driver(engine) as conn:
        row = await conn.fetchrow(query, sb_uuid, team_uuid)
    if row is None:
        raise NotFound("sandbox not found")
    if states is not None:
        check_state(row["status"], states)
    return row


async def touch(engine: AsyncEngine, sb_uuid: uuid.UUID) -> None:
    """Activity moves ``last_active_at`` of a running sandbox (exec and ping; file operations do
    not, docs/spec.md §2.7)."""
    async with driver(engine) as conn:
        await conn.execute(q.TOUCH, sb_uuid, clock.now())


# ------------------------------------------------------------------------------------ create


@dataclass(frozen=True)
class Created:
    """A new sandbox: its row (``q.VIEW_COLUMNS``) and its traffic token (shown this once)."""

    row: Mapping[str, Any]
    traffic_token: str

    def view(self) -> SandboxView:
        view = sandbox_model(self.row)
        view.traffic_token = self.traffic_token
        return view

    def json(self) -> bytes:
        """The view's JSON (None left out), dumped once: the REST create's answer (FastAPI's
        response model would validate and dump it again)."""
        return self.view().model_dump_json(exclude_none=True).encode()


async def create(
    engine: AsyncEngine,
    pool: HostClientPool,
    scheduler: Scheduler,
    ctx: AuthContext,
    params: CreateParams,
    *,
    settings: Settings,
    store: LayerStore | None = None,
    timings: dict[str, float] | None = None,
) -> Created:
    """Resolve the template and the size, reserve a host, bring the template's layers there
    from ``store`` if it lacks some, have its agent create the sandbox, record it ``running``
    (undoing what was done when a step fails). ``timings`` (if given) receives ``agent``: the
    CreateSandbox RPC's duration in ms, as seen from the CP — the API reports it in
    ``Server-Timing`` so the CP's own share is visible."""
    team_uuid = require_team(ctx)
    ref = params.template or "minimal"
    m = TEMPLATE_REF_RE.match(ref)  # `name` (its newest version) or `name:tag` (`v<N>`: version N)
    if m is None:
        raise InvalidRequest("invalid template name (want name or name:tag)")
    # Two single statements outside a transaction (no BEGIN/COMMIT round trips), on one pool
    # checkout (each costs CPU): the template with the candidate hosts, then the pending row
    # (atomic on its own; the reads need no snapshot shared with it).
    sb_uuid = ids.new_uuid()
    async with driver(engine) as conn:
        plan = await _resolve(conn, settings, team_uuid, ref, m.group(1), m.group(2) or "", params)
        plan = dataclasses.replace(plan, replica=replica_lease.owner_of(engine))
        first = await reserve(conn, scheduler, settings, team_uuid, plan, sb_uuid, params)
    placed = await place(
        engine, pool, scheduler, settings, team_uuid, plan, params, store, timings, (sb_uuid, first),
        owner_account=ctx.owner_id,
    )  # fmt: skip
    host, client, sb_uuid, req, resp = placed
    token, token_digest = new_traffic_token()
    row = await _record_running(engine, client, ctx, team_uuid, sb_uuid, plan, resp, token_digest, params)
    log.info(
        "sandbox created sandbox=%s host=%s team=%s",
        req.sandbox_id,
        ids.host_id(host["id"]),
        ids.team_id(team_uuid),
    )
    return Created(row, token)


async def _resolve(
    conn: asyncpg.Connection,
    settings: Settings,
    team_uuid: uuid.UUID,
    ref: str,
    name: str,
    tag: str,
    params: CreateParams,
) -> Plan:
    """The live team (403 ``no_team``), the template version (404) and the size within the
    platform's maxima (400), with the team's eligible hosts, in one statement."""
    rows = await conn.fetch(q.RESOLVE, name, team_uuid, tag)
    if not rows:
        raise no_team()
    r = rows[0]
    if r["template_id"] is None:
        raise NotFound(f'template "{ref}" not found')
    lim = limits.PlatformLimits.from_settings(settings).with_overrides(r["limit_keys"], r["limit_values"])
    # A snapshot carries its source sandbox's shape (docs/spec.md §2.5 step 4); the maxima hold for it
    # too (an admin may have lowered them since).
    from_snapshot = r["template_type"] == "snapshot"
    shape = limits.sandbox_shape(
        lim,
        vcpus=r["template_vcpus"] if from_snapshot else params.vcpus,
        memory_mb=r["template_memory_mb"] if from_snapshot else params.memory_mb,
        disk_size_mb=params.disk_size_mb,
        timeout_sec=params.timeout_sec,
    )
    if params.lifetime_s is not None:
        # An absolute lifetime replaces the inactivity pause (0: none, on the agent too).
        shape = dataclasses.replace(shape, timeout_sec=0)
    chain = layers.chain_of(r["template_base"], r["template_layers"], r["template_config"])
    runtime = runtime_for(settings, params.runtime, ref, r["template_kind"])
    hosts = [h for h in rows if h["id"] is not None]
    return Plan(ref, r, shape, limits.team_quotas(lim, r), chain, runtime=runtime, hosts=hosts)


def runtime_for(settings: Settings, asked: str | None, ref: str, template_kind: str) -> str:
    """The sandbox's runtime: the one asked for, else the platform default; "" when that is
    "host" (its host's default, chosen with the host: scheduler.runtime_on). A memory snapshot
    holds a gVisor memory image, so it implies gvisor, and asking for another runtime is a 400."""
    if template_kind == "memory":
        if asked not in (None, "gvisor"):
            raise InvalidRequest(
                f'template "{ref}" is a memory snapshot, which starts on the gvisor runtime only '
                f"(asked for {asked})"
            )
        return "gvisor"
    if asked:
        return asked
    return "" if settings.default_runtime == HOST_RUNTIME else settings.default_runtime


async def _record_running(
    engine: AsyncEngine,
    client: HostClient,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    sb_uuid: uuid.UUID,
    plan: Plan,
    resp: pb.CreateSandboxResponse,
    token_digest: str,
    params: CreateParams,
) -> Mapping[str, Any]:
    """Mark the new sandbox ``running`` with its audit row. A container whose record cannot be
    written, or whose sandbox was destroyed (or team deleted) meanwhile, is destroyed again."""
    sid = ids.sandbox_id(sb_uuid)
    actor_type, actor_id, actor_name = audit.actor_of(ctx)
    now = clock.now()
    end_at = now + timedelta(seconds=params.lifetime_s) if params.lifetime_s is not None else None
    try:
        async with driver(engine) as conn:
            row = await conn.fetchrow(
                q.MARK_RUNNING,
                sb_uuid, answered_ip(resp.host_ip, client.host_id), now, ids.new_uuid(), team_uuid,
                actor_type, actor_id, actor_name, sid,
                json.dumps({**audit.request_metadata(), "template": plan.template}),
                # The agent sizes the disk to fit the memory limit and says what it made.
                answered_disk_mb(resp.disk_size_mb, plan.shape.disk_size_mb),
                token_digest, json.dumps(params.metadata or {}), end_at, params.on_end,
                params.all_ports_public,
            )  # fmt: skip
            marked = row is not None
            if row is None:
                # Someone (a destroy, a monitor pass) moved it on while the agent was creating it.
                row = await conn.fetchrow(q.BY_ID, sb_uuid)
    except BaseException:
        # The caller is told the create failed (and may retry): the container must not live on
        # unrecorded. Shielded, so a cancelled request still cleans up.
        await asyncio.shield(client.destroy_best_effort(sid, why="sandbox create (record not written)"))
        raise
    if row is None:
        raise InternalError("sandbox record vanished during create")
    if row["status"] in _HIDDEN:
        # Destroyed, or its team deleted, while the agent was creating it: nobody may use it,
        # so it must not run on.
        await asyncio.shield(client.destroy_best_effort(sid, why="sandbox create (stopped meanwhile)"))
        async with driver(engine) as conn:
            team_live = await conn.fetchval(q.TEAM_LIVE, team_uuid)
        if not team_live:
            raise no_team()
        raise InvalidState("the sandbox was destroyed while it was being created")
    if not marked:
        await audit.record(
            engine, ctx, team_id=team_uuid, action="create", resource_type="sandbox", resource_id=sid,
            metadata={"template": plan.template},
        )  # fmt: skip
    return row


# ------------------------------------------------------------------------------ read, destroy


async def list_sandboxes(engine: AsyncEngine, ctx: AuthContext) -> list[SandboxView]:
    team_uuid = require_team(ctx)
    async with driver(engine) as conn:
        rows = await conn.fetch(q.LIST, team_uuid, _HIDDEN)
    return [sandbox_model(r) for r in rows]


async def get_sandbox(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> SandboxView:
    return (await find(engine, ctx, sandbox_id)).sandbox


async def destroy_sandbox(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    *,
    reason: str = end_reasons.DELETED,
) -> None:
    """Destroy it on its host and mark it ``stopped`` with ``reason`` (an end_reasons constant:
    the team's DELETE unless a sweeper ends it for another reason). A ``missing`` sandbox (its
    host stopped beating) is only marked: its host is not asked, since it cannot answer, and
    should it come back, the host monitor destroys there what has a final record (also one the
    monitor made ``running`` again between this read and the mark)."""
    found = await find(engine, ctx, sandbox_id)
    if found.sandbox.status == "stopped":
        return
    sid = found.sandbox.id
    if found.sandbox.status != "missing":
        await _destroy_on_host(found, pool)
    actor_type, actor_id, actor_name = audit.actor_of(ctx)
    async with driver(engine) as conn:
        await conn.fetchval(
            q.MARK_DESTROYED,
            found.sb_uuid, clock.now(), found.sandbox.status == "paused", ids.new_uuid(),
            found.row["team_id"], actor_type, actor_id, actor_name, sid,
            json.dumps(audit.request_metadata()), reason,
        )  # fmt: skip
    log.info("sandbox destroyed sandbox=%s was=%s", sid, found.sandbox.status)


async def _destroy_on_host(found: Found, pool: HostClientPool) -> None:
    """DestroySandbox on its host: 404 when the host's row is gone, 500 without an address."""
    found.require_host()
    if not found.host_address:
        raise InternalError("sandbox host has no address")
    try:
        await found.host_client(pool).stub.DestroySandbox(
            pb.DestroySandboxRequest(sandbox_id=found.sandbox.id), timeout=60
        )
    except AgentError as e:
        # docs/design.md §4: only NotFound (the agent knows nothing of it) is swallowed; anything else
        # leaves the row as it is and surfaces as 502.
        if not e.is_not_found:
            raise


# --------------------------------------------------------------------------- team soft delete


async def destroy_on_hosts(
    engine: AsyncEngine, pool: HostClientPool, sandbox_refs: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> None:
    """Team soft delete (docs/spec.md §7.3 step 2): destroy each ``(sandbox_id, host_id)`` on its host,
    concurrently. NotFound is ignored and other errors are logged: the delete goes on, and the
    caller then marks the rows ``stopped`` in its own transaction."""
    host_ids = {h for _, h in sandbox_refs}
    async with autocommit(engine) as conn:
        rows = (
            await conn.execute(sa.select(hosts.c.id, hosts.c.address).where(hosts.c.id.in_(host_ids)))
        ).all()
    addresses = {r.id: r.address for r in rows}

    async def destroy(sb: uuid.UUID, host_uuid: uuid.UUID) -> None:
        if address := addresses.get(host_uuid):
            client = pool.get_for(host_uuid, address)
            await client.destroy_best_effort(ids.sandbox_id(sb), why="team delete")

    await asyncio.gather(*(destroy(sb, h) for sb, h in sandbox_refs))
