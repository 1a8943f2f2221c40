"""HostMonitor (docs/spec.md §4.1 with docs/design.md §4's auto-paused rule): keeps host and sandbox
records true.

Each pass, per host whose status is not ``pending``/``offline``:

* **passive** — heartbeat older than ``heartbeat_stale_s`` (90 s): host → ``unreachable``, its
  ``pending``/``starting``/``running`` sandboxes → ``missing``; no active phase this pass;
* **active** — only for ``online`` hosts with an address: ``ListSandboxes`` and reconcile the
  host's ``missing`` and ``running`` records: auto-paused (or listed as paused) → ``paused``;
  listed as running → ``running``; not on the host at all → ``stopped``; a ``paused`` record
  only when its sandbox is not on the host at all (its container died while frozen, noticed by
  the agent: agent/container_exits.py) → ``stopped``. Also ``pending``
  records that only a control plane that died mid-create leaves behind (SPEC is silent; D19):
  older than ``pending_grace_s`` (60 s) and not among the creates the host reports in flight —
  or, from an agent that does not report those, older than any create can take (the create RPC's
  deadline plus a margin). A ``pending`` record whose create belongs to a control-plane replica
  whose lease (``replica_leases``) is gone or expired skips the grace: nobody is left to finish
  it, so a host that reports its creates settles it in the first pass that sees it not in
  flight. On the host → ``running`` (or ``paused``), so its owner sees and can destroy it; not
  there → ``error``, as a create that failed. Last, sandboxes the host still
  runs whose record is final (``stopped``, ``error``) are destroyed there (SPEC is silent):
  destroyed or their team deleted while the host was unreachable, or a create the CP gave up on
  after the agent had made it (an agent killed mid-create re-adopts it on restart). Nobody can
  reach them any more. A sandbox the database does not know at all is left alone and logged.
  The answer's egress readings go to the sandboxes' rows (usage.py: per-team egress bytes).

A BYOC host's agent is its tenant's (docs/security.md): its answer changes only that host's
records (every statement is scoped to the host), an answer of more than ``MAX_LISTED`` entries
is refused whole, and its check runs beside the pass rather than in it, at most one per host and
on at most half the slots, so hosts that answer at their deadline never delay the platform's;
and one team's checks take at most half of those (``_team_share``), and only that many of them
stand in the slots' queue, so another tenant's check waits behind a few of each team's checks,
never behind all of a tenant's hosts that hang.

Safe with several CP replicas running it at once:

* the passive transition is one conditional UPDATE (``WHERE status = <old> AND heartbeat still
  stale``), so exactly one replica wins and a heartbeat landing meanwhile is never undone;
* the active phase for a host runs under ``pg_try_advisory_xact_lock`` held across the RPC *and*
  the writes: the agent clears its auto-paused list on read, so a second replica reading the list
  concurrently would see it empty and wrongly stop auto-paused sandboxes. A replica that does not
  get the lock skips the host this pass;
* sandbox updates are conditional on the status read and on ``last_updated`` being older than
  the moment the agent was asked, so a sandbox created or resumed while ``ListSandboxes`` was in
  flight is not mistaken for an orphan; and since that compares two replicas' clocks, a record
  is only stopped (or errored) if a second ``ListSandboxes``, asked after the records were
  read, still lacks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.background import Worker
from warren.cp.db import end_reasons, locks
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import hosts, replica_leases, sandboxes
from warren.cp.hosts.agent_client import answered_ip
from warren.cp.hosts.client_pool import DEFAULT_TIMEOUT_S, HostClientPool
from warren.cp.hosts.usage import record_egress
from warren.errors import AgentError, WarrenError
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.monitor")

LIST_DEADLINE_S = 10.0
# A `pending` record this old has outlived its create: the CP gives up on the RPC at its deadline
# and then marks it `error` itself, unless that CP died first.
ABANDONED_PENDING_S = DEFAULT_TIMEOUT_S + 60
# Destroys of sandboxes with a final record, at once per host.
FINAL_DESTROY_CONCURRENCY = 8
# Entries one ListSandboxes answer may hold (its four lists together): far more sandboxes than a
# host runs, and below PostgreSQL's 32767 parameters a statement (the listed ids are looked up in
# one). A BYOC host's agent is its tenant's: a larger answer is refused whole, not taken apart
# on the event loop (100 000 entries: ~0.2 s of the CP's CPU and ~35 MiB).
MAX_LISTED = 16_384
# Why a record the host's answer ends ended, by its status before (end_reasons): an abandoned
# create the host never made; a sandbox of a host that went unreachable and came back without
# it; else a sandbox its agent no longer has (its container ended: a crash, an OOM kill).
_END_REASONS = {"pending": end_reasons.CREATE_FAILED, "missing": end_reasons.HOST_LOST}


def _classify(
    rows: Sequence[RowMapping], on_agent: Mapping[str, str], auto_paused: set[str], creating: set[str]
) -> dict[str, list[RowMapping]]:
    """The records whose status the host's answer changes, by their new status."""
    to: dict[str, list[RowMapping]] = {"running": [], "paused": [], "stopped": [], "error": []}
    for r in rows:
        sid = ids.sandbox_id(r["id"])
        agent_status = on_agent.get(sid)
        if r["status"] == "pending" and sid in creating and agent_status is None:
            continue  # its create is still under way on the host: the CP that asked may be alive
        if r["status"] == "paused" and agent_status is not None:
            continue  # only its absence is news (a resume under way may be listed running)
        if sid in auto_paused or agent_status == "paused":
            new = "paused"  # docs/design.md §4: never stopped, its state still exists on the host
        elif agent_status is None:
            # Gone from the host: an orphan record, or an abandoned create that never made it.
            new = "error" if r["status"] == "pending" else "stopped"
        else:
            new = "running"
        if new != r["status"]:
            to[new].append(r)
    return to


@dataclass
class _Answer:
    """What a pass's ListSandboxes answers say, merged (a second answer may be asked for)."""

    # Our runtime keeps paused sandboxes listed (status "paused"); ids paused by the TTL reaper
    # or PauseAll are also in auto_paused_sandbox_ids, listed or not.
    listed: dict[str, str]
    host_ips: dict[str, str]
    auto_paused: set[str]
    creating: set[str]  # the creates the host has in flight
    answers: list[Any] = field(default_factory=list)  # every answer read

    @classmethod
    def of(cls, resp: Any) -> _Answer:
        answer = cls({}, {}, set(), set())
        answer.merge(resp)
        return answer

    def merge(self, resp: Any) -> None:
        self.listed.update({s.sandbox_id: s.status for s in resp.sandboxes})
        self.host_ips.update({s.sandbox_id: s.host_ip for s in resp.sandboxes})
        self.auto_paused |= set(resp.auto_paused_sandbox_ids)
        self.creating |= set(resp.creating_sandbox_ids)  # a create that arrived meanwhile
        self.answers.append(resp)

    def classify(self, rows: Sequence[RowMapping]) -> dict[str, list[RowMapping]]:
        return _classify(rows, self.listed, self.auto_paused, self.creating)


async def _record_created(
    conn: AsyncConnection, created: list[uuid.UUID], host_ips: Mapping[str, str], now: datetime
) -> None:
    """Abandoned creates the host did make: what the dead CP would have written had it seen the
    create answered."""
    for u in created:
        await conn.execute(
            sandboxes.update()
            .where(sandboxes.c.id == u)
            .values(
                host_ip=answered_ip(host_ips.get(ids.sandbox_id(u), "")),
                started_at=sa.func.coalesce(sandboxes.c.started_at, now),
            )
        )


async def _record_paused_states(conn: AsyncConnection, paused: list[uuid.UUID], answers: list[Any]) -> None:
    """How each sandbox this pass marked paused is paused, as its host listed it: "disk" when
    gVisor checkpointed it (an auto-pause), else a freeze (NULL: "memory")."""
    if not paused:
        return
    disk = [s.sandbox_id for a in answers for s in a.sandboxes if s.paused_state == "disk"]
    on_disk = [u for u in paused if ids.sandbox_id(u) in disk]
    state = sa.case((sandboxes.c.id.in_(on_disk), "disk"), else_=None) if on_disk else None
    await conn.execute(sandboxes.update().where(sandboxes.c.id.in_(paused)).values(paused_state=state))


class PassResult:
    """What one pass changed (for logs and tests)."""

    def __init__(self) -> None:
        self.marked_down: list[str] = []
        self.to_missing: list[str] = []
        self.to_running: list[str] = []
        self.to_paused: list[str] = []
        self.to_stopped: list[str] = []
        self.to_error: list[str] = []
        self.destroyed: list[str] = []
        self.skipped_locked: list[str] = []

    def __repr__(self) -> str:
        return f"PassResult({ {k: v for k, v in vars(self).items() if v} })"


class AuditWriter(Protocol):
    """Records a system audit event inside the caller's transaction: ``services.audit.record``,
    passed in by the app's composition root (``cp/app.py``) so this package imports no service."""

    async def __call__(
        self,
        db: AsyncConnection,
        ctx: None,
        *,
        team_id: uuid.UUID | None,
        action: str,
        resource_type: str,
        resource_id: str = "",
        status: Literal["success", "info", "warning", "error"] = "success",
        metadata: dict[str, Any] | None = None,
    ) -> None: ...


class HostMonitor(Worker):
    task_name = "host-monitor"

    def __init__(
        self,
        engine: AsyncEngine,
        pool: HostClientPool,
        audit: AuditWriter,
        *,
        interval_s: float = 30.0,
        stale_s: float = 90.0,
        concurrency: int = 8,
        pending_grace_s: float = 60.0,
        replica_id: uuid.UUID | None = None,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.audit = audit
        self.interval_s = interval_s
        self.stale_s = stale_s
        self.concurrency = concurrency
        self.pending_grace_s = pending_grace_s
        # This monitor's own replica: alive whatever its lease row says (a clock moved by a test).
        self.replica_id = replica_id
        # Every check (each holds a database connection across its agent call) takes one of
        # these; BYOC hosts' checks first take one of their half (_byoc_checks).
        self._slots = asyncio.Semaphore(concurrency)
        byoc_slots = max(1, concurrency // 2)
        self._byoc_slots = asyncio.Semaphore(byoc_slots)
        self._byoc: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Per BYOC team: its checks wait here before they queue for a BYOC slot, so one team's
        # hosts (1000 a team, each answering at its deadline) never hold more than its share,
        # nor stand in the queue ahead of another team's check more than that many deep.
        self._team_share = max(1, byoc_slots // 2)
        self._team_slots: dict[uuid.UUID | None, tuple[asyncio.Semaphore, int]] = {}

    # -- lifecycle (start: Worker) -----------------------------------------------------------
    async def stop(self) -> None:
        await super().stop()
        tasks = list(self._byoc.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settled(self) -> None:
        """Wait for the BYOC hosts' checks the passes left running (tests, and stop)."""
        while self._byoc:
            await asyncio.gather(*list(self._byoc.values()), return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                result = await self.run_once()
                if any(vars(result).values()):
                    log.info("monitor pass: %r", result)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitor pass failed")
            await asyncio.sleep(self.interval_s)

    # -- one pass ----------------------------------------------------------------------------
    async def run_once(self) -> PassResult:
        result = PassResult()
        async with autocommit(self.engine) as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(hosts)
                        .where(hosts.c.status.not_in(("pending", "offline")))
                        .order_by(hosts.c.created_at, hosts.c.id)
                    )
                )
                .mappings()
                .all()
            )
        now = clock.now()
        cutoff = now - timedelta(seconds=self.stale_s)
        active: list[RowMapping] = []
        for h in rows:
            hb = h["last_heartbeat_at"]
            stale = hb is None or hb < cutoff
            if stale:
                if h["status"] != "unreachable":
                    await self._mark_down(h, cutoff, result)
                continue
            if h["status"] == "online" and h["address"]:
                active.append(h)
        # A BYOC host's agent is its tenant's and may answer at its deadline, every time: its
        # check runs on its own (_byoc_checks), so it never holds the pass, which checks the
        # platform's hosts on time.
        for h in active:
            if h["type"] == "byoc":
                self._byoc_check(h, result)
        platform = [h for h in active if h["type"] != "byoc"]

        # Active checks talk to agents; several at once so one slow host does not delay the
        # others, but bounded: each holds a database connection across its agent call.
        async def check(h: RowMapping) -> None:
            async with self._slots:
                await self._reconcile(h, result)

        # Every check ends before the pass does (a failed one must not keep running into the
        # next pass, past the bound); a failure is that host's alone.
        outcomes = await asyncio.gather(*(check(h) for h in platform), return_exceptions=True)
        for h, outcome in zip(platform, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.error("monitor: check of %s failed", ids.host_id(h["id"]), exc_info=outcome)
        return result

    def _byoc_check(self, h: RowMapping, result: PassResult) -> None:
        """Start a BYOC host's check unless its last one is still running (at most one per
        host); at most half the monitor's slots go to BYOC hosts, so a tenant's hosts that
        answer at their deadline (1000 a team) leave the other half to the platform's. What it
        changes is added to ``result`` when it ends."""
        if (running := self._byoc.get(h["id"])) is not None and not running.done():
            return

        async def check() -> None:
            try:
                async with self._team_turn(h["team_id"]), self._byoc_slots, self._slots:
                    await self._reconcile(h, result)
            except Exception:
                log.exception("monitor: check of %s failed", ids.host_id(h["id"]))

        def forget(task: asyncio.Task[None]) -> None:
            if self._byoc.get(h["id"]) is task:
                del self._byoc[h["id"]]

        task = asyncio.create_task(check(), name=f"monitor-check-{ids.host_id(h['id'])}")
        self._byoc[h["id"]] = task
        task.add_done_callback(forget)

    @contextlib.asynccontextmanager
    async def _team_turn(self, team_id: uuid.UUID | None) -> AsyncIterator[None]:
        """One of the team's share of BYOC slots (its entry goes with its last check)."""
        gate, users = self._team_slots.get(team_id, (asyncio.Semaphore(self._team_share), 0))
        self._team_slots[team_id] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._team_slots[team_id]
            if users > 1:
                self._team_slots[team_id] = (gate, users - 1)
            else:
                del self._team_slots[team_id]

    async def _mark_down(self, h: RowMapping, cutoff: datetime, result: PassResult) -> None:
        hid = ids.host_id(h["id"])
        now = clock.now()
        async with transaction(self.engine) as conn:
            won = (
                await conn.execute(
                    hosts.update()
                    .where(
                        hosts.c.id == h["id"],
                        hosts.c.status == h["status"],
                        sa.or_(hosts.c.last_heartbeat_at.is_(None), hosts.c.last_heartbeat_at < cutoff),
                    )
                    .values(status="unreachable", updated_at=now)
                    .returning(hosts.c.id)
                )
            ).first()
            if won is None:
                return  # another replica did it, or a heartbeat arrived meanwhile
            missing = (
                (
                    await conn.execute(
                        sandboxes.update()
                        .where(
                            sandboxes.c.host_id == h["id"],
                            sandboxes.c.status.in_(("running", "starting", "pending")),
                        )
                        .values(status="missing", last_updated=now)
                        .returning(sandboxes.c.id)
                    )
                )
                .scalars()
                .all()
            )
            await self.audit(
                conn, None, team_id=h["team_id"], action="marked_down", resource_type="host",
                resource_id=hid, status="warning", metadata={"missing": len(missing)},
            )  # fmt: skip
        result.marked_down.append(hid)
        result.to_missing.extend(ids.sandbox_id(s) for s in missing)
        log.warning("host marked unreachable host=%s sandboxes_missing=%d", hid, len(missing))

    async def _reconcile(self, h: RowMapping, result: PassResult) -> None:
        hid = ids.host_id(h["id"])
        async with transaction(self.engine) as conn:
            try_lock = sa.func.pg_try_advisory_xact_lock(locks.MONITOR_NS, locks.key_of(h["id"]))
            got = (await conn.execute(sa.select(try_lock))).scalar()
            if not got:
                result.skipped_locked.append(hid)
                return
            # Only for hosts still online: another replica may have marked it down meanwhile.
            status = (await conn.execute(sa.select(hosts.c.status).where(hosts.c.id == h["id"]))).scalar()
            if status != "online":
                return
            asked_at = clock.now()
            try:
                resp = await self._list(h)
            except WarrenError as e:
                # Transient by assumption: the passive phase catches a truly dead host.
                log.info("monitor: ListSandboxes on %s failed: %s", hid, e)
                return
            finished = await self._apply(conn, h, resp, asked_at, result)
            # Egress readings, under the same lock: hosts' answers applied in order (usage.py).
            await record_egress(conn, h["id"], resp)
        # After the transaction: destroys can take a while, and need no lock (a final record
        # stays final). A few at a time, so hundreds after a long outage do not take long.
        gate = asyncio.Semaphore(FINAL_DESTROY_CONCURRENCY)

        async def destroy(sid: str) -> None:
            async with gate:
                await self.pool.get(h).destroy_best_effort(sid, why="monitor (record is final)")
            result.destroyed.append(sid)
            log.warning("monitor: destroyed %s on %s: its record is final", sid, hid)

        await asyncio.gather(*(destroy(sid) for sid in finished))

    async def _list(self, h: RowMapping) -> Any:
        req = pb.ListSandboxesRequest()
        resp = await self.pool.get(h).stub.ListSandboxes(req, timeout=LIST_DEADLINE_S)
        entries = (
            len(resp.sandboxes) + len(resp.auto_paused_sandbox_ids) + len(resp.creating_sandbox_ids)
            + len(resp.ended_egress)
        )  # fmt: skip
        if entries > MAX_LISTED:
            too_many = f"ListSandboxes answered {entries} entries, more than {MAX_LISTED}"
            raise AgentError(too_many, rpc_code="RESOURCE_EXHAUSTED")
        return resp

    async def _apply(
        self, conn: AsyncConnection, h: RowMapping, resp: Any, asked_at: datetime, result: PassResult
    ) -> list[str]:
        """Reconcile the records with the host's answer; returns the sandboxes the host runs
        whose record is final, to destroy there."""
        answer = _Answer.of(resp)
        # A host that says which creates it has in flight lets a dead CP's `pending` records
        # settle after a short grace; without that, only once no create can still be running.
        pending_s = self.pending_grace_s if resp.reports_creating else ABANDONED_PENDING_S
        # A dead replica's creates need no grace, if the host says which creates it has.
        rows = await self._candidates(conn, h, asked_at, pending_s, orphans=resp.reports_creating)
        to = answer.classify(rows)
        if to["stopped"] or to["error"]:
            # Gone from the host? Ask again before saying so: `last_updated < asked_at` compares
            # two replicas' clocks, so a create that finished just after the first answer could
            # pass for older. A sandbox whose record we have read as running exists on its host
            # by now if it exists at all. (We hold the host's lock: the auto-paused ids this
            # answer reports are ours to apply.)
            answer.merge(await self._list(h))
            to = answer.classify(rows)
        now = clock.now()
        created, paused = await self._set_statuses(conn, ids.host_id(h["id"]), to, asked_at, now, result)
        await _record_created(conn, created, answer.host_ips, now)
        await _record_paused_states(conn, paused, answer.answers)
        return await self._final_on_host(conn, h, answer.listed)

    async def _set_statuses(
        self,
        conn: AsyncConnection,
        hid: str,
        to: dict[str, list[RowMapping]],
        asked_at: datetime,
        now: datetime,
        result: PassResult,
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """The classified records' new statuses, each conditional on the status read and on no
        change since the host was asked; an auto-pause is audited. Returns the abandoned creates
        the host did make and the sandboxes now paused."""
        created: list[uuid.UUID] = []
        paused: list[uuid.UUID] = []
        for new_status, items in to.items():
            if not items:
                continue
            for old_status in ("missing", "running", "pending", "paused"):
                batch = [r for r in items if r["status"] == old_status]
                if not batch:
                    continue
                ended = new_status in ("stopped", "error")
                why = _END_REASONS.get(old_status, end_reasons.GONE_FROM_HOST) if ended else None
                changed = (
                    (
                        await conn.execute(
                            sandboxes.update()
                            .where(
                                sandboxes.c.id.in_([r["id"] for r in batch]),
                                sandboxes.c.status == old_status,
                                sandboxes.c.last_updated < asked_at,
                            )
                            .values(status=new_status, last_updated=now, end_reason=why)
                            .returning(sandboxes.c.id, sandboxes.c.team_id)
                        )
                    )
                    .mappings()
                    .all()
                )
                for c in changed:
                    sid = ids.sandbox_id(c["id"])
                    getattr(result, f"to_{new_status}").append(sid)
                    if old_status == "pending" and new_status in ("running", "paused"):
                        created.append(c["id"])
                    if new_status == "paused":
                        paused.append(c["id"])
                        await self.audit(
                            conn, None, team_id=c["team_id"], action="pause", resource_type="sandbox",
                            resource_id=sid, status="info", metadata={"reason": "auto_paused"},
                        )  # fmt: skip
                    log.info("monitor: sandbox %s %s -> %s host=%s", sid, old_status, new_status, hid)
        return created, paused

    async def _candidates(
        self, conn: AsyncConnection, h: RowMapping, asked_at: datetime, pending_s: float, *, orphans: bool
    ) -> Sequence[RowMapping]:
        """The host's records the answer may change: `missing`, `running` and `paused` ones, `pending`
        ones older than ``pending_s`` or (``orphans``) whose replica's lease is gone or expired;
        none changed since the host was asked."""
        abandoned = sandboxes.c.last_updated < asked_at - timedelta(seconds=pending_s)
        if orphans:
            live = sa.exists().where(
                replica_leases.c.id == sandboxes.c.replica_id, replica_leases.c.expires_at > asked_at
            )
            orphaned = sa.and_(sandboxes.c.replica_id.is_not(None), ~live)
            if self.replica_id is not None:
                orphaned = sa.and_(orphaned, sandboxes.c.replica_id != self.replica_id)
            abandoned = sa.or_(abandoned, orphaned)
        return (
            (
                await conn.execute(
                    sa.select(sandboxes.c.id, sandboxes.c.status, sandboxes.c.team_id).where(
                        sandboxes.c.host_id == h["id"],
                        sa.or_(
                            sandboxes.c.status.in_(("missing", "running", "paused")),
                            sa.and_(sandboxes.c.status == "pending", abandoned),
                        ),
                        sandboxes.c.last_updated < asked_at,
                    )
                )
            )
            .mappings()
            .all()
        )

    async def _final_on_host(
        self, conn: AsyncConnection, h: RowMapping, on_agent: dict[str, str]
    ) -> list[str]:
        listed: dict[uuid.UUID, str] = {}
        for sid in on_agent:
            with contextlib.suppress(WarrenError):  # not one of our ids: not ours to judge
                listed[ids.parse_id(ids.Kind.SANDBOX, sid)] = sid
        if not listed:
            return []
        q = sa.select(sandboxes.c.id, sandboxes.c.status, sandboxes.c.host_id).where(
            sandboxes.c.id.in_(list(listed))
        )
        known = {r.id: r for r in (await conn.execute(q)).all()}
        for u, sid in listed.items():
            if u not in known:
                log.warning("monitor: host %s runs %s, which has no record", ids.host_id(h["id"]), sid)
        return [
            listed[u] for u, r in known.items() if r.status in ("stopped", "error") and r.host_id == h["id"]
        ]
