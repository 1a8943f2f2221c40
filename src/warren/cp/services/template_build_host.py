"""A build's steps on its build host (docs/templates.md §4): choosing the host, bringing the
chain to it, and ``RunBuildStep`` — its output into the build log, its layer into the store.

One host runs every step of a build (the layers each step makes stay installed there, so the
next step finds its chain in place). The build sandbox always has the network, whatever the
team's own setting: ``apt-get`` and ``pip`` must reach their registries.

Each step's sandbox (``WARREN_BUILD_VCPUS`` / ``WARREN_BUILD_MEMORY_MB``) is reserved in its host's
capacity while the step runs, like a sandbox (session 15): the scheduler picks only a host with
room for it, ``warren_reserve_build`` (migration 0020) records it under the host's row lock with
the same fit check as a create's, and creates count it (``warren_host_usage``). A step finding no
room waits up to ``WARREN_BUILD_CAPACITY_WAIT_S``, saying so in the log, then fails the build with
503 ``no_capacity``. The reservation ends with the step, or with the build's running status (a
build failed by the stale-heartbeat sweep, its replica dead mid-step, releases it with it).

Waiting steps take the room in turn (session 38, migration 0024): each try that finds none
renews the build's wait (``wait_since``, ``wait_seen_at``, ``wait_host_id``), and
``warren_reserve_build`` fits a step only beside what the builds ahead of it need
(``warren_builds_ahead``: the oldest wait first, a team that just took a room behind every build
waiting then). A team that
resubmits the moment its builds end therefore queues behind another team's waiting build
instead of taking every room that is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.aio import outlast
from warren.config import Settings
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import teams, template_builds, users_teams
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.hosts.scheduler import Host, Overcommit, Placement, Reservation, Scheduler
from warren.cp.services import egress
from warren.cp.services import layers as layer_svc
from warren.cp.services.template_spec import SpecConfig
from warren.cp.store import LayerStore
from warren.errors import AgentError, InternalError, PayloadTooLarge, ServiceUnavailable, WarrenError
from warren.layers.hashing import LayerMeta
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.builds")

MiB = 1024 * 1024
Output = Callable[[bytes], Awaitable[None]]
# A step's own records of its layer once stored (the team's store count, its build cache).
Keep = Callable[[LayerMeta], Awaitable[None]]
# How long a cancelled build still takes the layer its host is sending (4 GiB at ~35 MB/s).
TAKE_AFTER_CANCEL_S = 120.0
# Choices of a first build host when the chosen one filled up or left after it was chosen.
_PICK_ATTEMPTS = 3
# How often a waiting step tries again, renewing its wait: well inside the 15 s after which
# warren_builds_ahead (migration 0024) drops a wait not renewed, and soon enough that a room
# freed for the build at the head of the queue is not left empty for long.
WAIT_POLL_S = 0.5


class StepFailed(WarrenError):
    """A step ended without a layer: its command's exit code (None: it never got to exit)."""

    code = "build_step_failed"

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def chain_of(base: str, layers: Sequence[str], config: SpecConfig) -> pb.TemplateChain:
    # The config travels as a create's does (layers.config_proto: the one JSON -> proto map).
    return pb.TemplateChain(base=base, layers=list(layers), config=layer_svc.config_proto(config.as_json()))


@dataclass
class BuildHost:
    """The host a build runs its steps on, chosen at its first step that needs one."""

    engine: AsyncEngine
    pool: HostClientPool
    scheduler: Scheduler
    store: LayerStore
    settings: Settings
    team_id: uuid.UUID
    build_id: uuid.UUID
    host: Host | None = None
    egress_allow: tuple[str, ...] = ()
    # The team's owning account, read with the host's choice: the agent's turns are the account's.
    owner_account: uuid.UUID | None = None

    @property
    def host_id(self) -> uuid.UUID | None:
        return self.host["id"] if self.host is not None else None

    def _need(self) -> Reservation:
        s = self.settings
        return Reservation(
            s.build_vcpus,
            s.build_memory_mb,
            Overcommit(s.overcommit_cpu, s.overcommit_memory, s.overcommit_disk),
        )

    async def _first_choice(self, conn: Any, need: Reservation, tried: set[uuid.UUID]) -> Host:
        """A host with room for the step among the team's, its egress ranges and the team's owner
        read with it."""
        team = (
            await conn.execute(
                teams.select()
                .with_only_columns(teams.c.is_byoc, teams.c.egress_allow)
                .where(teams.c.id == self.team_id)
            )
        ).first()
        is_byoc = bool(team.is_byoc) if team is not None else False
        names = list(team.egress_allow) if team is not None else []
        self.egress_allow = tuple(egress.team_cidrs(egress.catalog_of(self.settings), names))
        owner = sa.select(users_teams.c.user_id).where(
            users_teams.c.team_id == self.team_id, users_teams.c.role == "owner"
        )
        self.owner_account = (await conn.execute(owner.limit(1))).scalar()
        return await self.scheduler.select_host(
            conn, self.team_id, is_byoc, Placement(need=need, avoid=tried)
        )

    async def _try_reserve(self, need: Reservation) -> tuple[Host | None, str]:
        """The step's room reserved on the build's host (chosen now at its first step), or None
        and why not now: ``no_capacity``, or ``host_gone`` (the build's host is not online: a
        late heartbeat under load marks it unreachable for a while). 503 ``no_hosts_available``
        when the team has no eligible host at all."""
        outcome, tried = "no_capacity", set[uuid.UUID]()
        for _ in range(_PICK_ATTEMPTS):
            async with autocommit(self.engine) as conn:
                try:
                    host = self.host if self.host is not None else await self._first_choice(conn, need, tried)
                except ServiceUnavailable as e:
                    if e.code != "no_capacity" and not tried:  # every host tried: none left
                        raise
                    return None, "no_capacity"
                oc = need.overcommit
                reserve = sa.func.warren_reserve_build(
                    self.build_id, host["id"], need.vcpus, need.memory_mb, oc.cpu, oc.memory
                )
                outcome = str((await conn.execute(sa.select(reserve))).scalar())
            if outcome == "ok":
                self.host = host
                return host, outcome
            if outcome == "no_build":
                raise WarrenError("the build was failed meanwhile (its heartbeat went stale)")
            if self.host is not None:  # later steps must run where the earlier layers are
                return None, outcome
            # Filled meanwhile, left, or its room is for builds waiting longer: another host may
            # have room (the scheduler's read does not see the queue).
            tried.add(host["id"])
            log.debug("build %s: host %s %s, choosing again", self.build_id, ids.host_id(host["id"]), outcome)
        return None, outcome

    async def _reserve(self, output: Output) -> tuple[Host, HostClient]:
        """Room for the step's sandbox on the build host, waiting up to
        ``WARREN_BUILD_CAPACITY_WAIT_S`` for it (said once in the log); then 503 ``no_capacity``
        (or ``build_host_unavailable``: the build's host stayed out of ``online``)."""
        need, wait_s = self._need(), self.settings.build_capacity_wait_s
        give_up = clock.monotonic() + wait_s
        told = False
        while True:
            host, why = await self.take_turn(need)
            if host is not None:
                return host, self.pool.get(host)
            left = give_up - clock.monotonic()
            if left <= 0 and why == "host_gone":
                raise ServiceUnavailable(
                    f"the build host has not been online for {wait_s:g} s; retry the build later",
                    code="build_host_unavailable",
                )
            if left <= 0:
                raise ServiceUnavailable(
                    f"no build host has room for this step's sandbox ({need.vcpus} vCPUs, "
                    f"{need.memory_mb} MiB) after waiting {wait_s:g} s; retry the build later",
                    code="no_capacity",
                )
            if not told:
                told = True
                what = "the build host to be online" if why == "host_gone" else "room on a build host"
                size = f"{need.vcpus} vCPUs, {need.memory_mb} MiB"
                await output(f"Waiting for {what} ({size}), up to {wait_s:g} s\n".encode())
            await asyncio.sleep(min(WAIT_POLL_S, left))

    async def take_turn(self, need: Reservation) -> tuple[Host | None, str]:
        """One try for the step's room (:meth:`_try_reserve`); without it, the build's place in
        the queue for room is kept (:meth:`_note_wait`) for its next try."""
        host, why = await self._try_reserve(need)
        if host is None:
            await self._note_wait(need)
        return host, why

    async def _note_wait(self, need: Reservation) -> None:
        """The step's place in the queue for room (migration 0024): when it began waiting (kept
        across tries), that it still waits, for which host (its build host once chosen; before,
        any), and what it needs."""
        b = template_builds.c
        async with autocommit(self.engine) as conn:
            await conn.execute(
                template_builds.update()
                .where(b.id == self.build_id, b.status == "running", b.reserved_host_id.is_(None))
                .values(
                    wait_since=sa.func.coalesce(b.wait_since, sa.func.now()),
                    wait_seen_at=sa.func.now(),
                    wait_host_id=self.host_id,
                    reserved_vcpus=need.vcpus,
                    reserved_memory_mb=need.memory_mb,
                )
            )

    async def _release(self) -> None:
        """The step's room given back; a failure here is logged (the build's end releases it:
        a reservation counts only while its build is running)."""
        try:
            async with autocommit(self.engine) as conn:
                await conn.execute(
                    template_builds.update()
                    .where(template_builds.c.id == self.build_id)
                    .values(reserved_host_id=None)
                )
        except Exception:
            log.exception("build %s: could not release its step's host reservation", self.build_id)

    async def run(
        self,
        base: str,
        layers: Sequence[str],
        config: SpecConfig,
        cmd: str,
        *,
        timeout_s: float,
        output: Output,
        keep: Keep,
    ) -> LayerMeta:
        """Run ``cmd`` (``/bin/sh -c``) on the chain as ``config`` says, put the layer it
        made in the store, record it (in the index and on this host) and ``keep`` it (the
        build's own records), all of it once the layer starts arriving: :meth:`_take_layer`.
        StepFailed for a nonzero exit or a step past its time; 413 for a layer past its size."""
        async with self._step(base, layers, config, cmd, timeout_s, output) as (host, call):
            return await self._receive(aiter(call), output, host, keep)

    async def probe(
        self,
        base: str,
        layers: Sequence[str],
        config: SpecConfig,
        cmd: str,
        *,
        timeout_s: float,
        output: Output,
    ) -> None:
        """Start a sandbox on the chain and run ``cmd`` in it, keeping nothing: StepFailed when
        the sandbox does not start or the command fails."""
        async with self._step(base, layers, config, cmd, timeout_s, output) as (_, call):
            events = aiter(call)
            while (ev := await _next_event(events, output, "the check")) is not None:
                if ev.WhichOneof("event") == "exit_code":
                    return  # exit 0; the layer that would follow is not wanted: the call is cancelled
        raise StepFailed("the build host ended the check without an exit code")

    @contextlib.asynccontextmanager
    async def _step(
        self, base: str, layers: Sequence[str], config: SpecConfig, cmd: str, timeout_s: float, output: Output
    ) -> AsyncIterator[tuple[Host, Any]]:
        """Room for the step on the build host, the chain brought there, then the RunBuildStep
        call (its stream of events): an agent error while it is read is the step's error; it is
        cancelled after, and the room released."""
        host, client = await self._reserve(output)
        try:
            async with self._call(host, client, base, layers, config, cmd, timeout_s) as call:
                yield host, call
        finally:
            await self._release()

    @contextlib.asynccontextmanager
    async def _call(
        self,
        host: Host,
        client: HostClient,
        base: str,
        layers: Sequence[str],
        config: SpecConfig,
        cmd: str,
        timeout_s: float,
    ) -> AsyncIterator[Any]:
        await layer_svc.ensure_on_host(
            self.engine, self.store, client, host["id"], layers, team=self.team_id, account=self.owner_account
        )
        s = self.settings
        req = pb.RunBuildStepRequest(
            build_id=ids.format_id(ids.Kind.BUILD, self.build_id),
            chain=chain_of(base, layers, config),
            cmd=cmd,
            timeout_sec=max(int(timeout_s), 1),
            max_layer_bytes=s.build_max_layer_mb * MiB,
            vcpus=s.build_vcpus,
            memory_mb=s.build_memory_mb,
            disk_size_mb=s.build_disk_mb,
            egress_allow=list(self.egress_allow),
            team_id=str(self.team_id),
            owner_account_id=str(self.owner_account or ""),
        )
        call = client.stub.RunBuildStep(req, timeout=timeout_s + 120)
        try:
            yield call
        except AgentError as e:
            raise _step_error(e) from e
        finally:
            call.cancel()

    async def _receive(
        self, events: AsyncIterator[pb.BuildStepEvent], output: Output, host: Host, keep: Keep
    ) -> LayerMeta:
        """Output goes to the log until the first layer chunk; then the layer is taken
        (:meth:`_take_layer`)."""
        first = b""
        while (ev := await _next_event(events, output, "the command")) is not None:
            kind = ev.WhichOneof("event")
            if kind == "layer_chunk":
                first = ev.layer_chunk
                break
            elif kind == "layer":  # an empty layer arrives as its meta alone
                break
        else:
            raise StepFailed("the build host ended the step without a layer")
        announced: list[LayerMeta] = []

        async def chunks() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for ev in events:
                kind = ev.WhichOneof("event")
                if kind == "layer_chunk":
                    yield ev.layer_chunk
                elif kind == "layer":
                    announced.append(LayerMeta(ev.layer.digest, ev.layer.size))
                elif kind == "output":
                    await output(ev.output)

        if not first and kind == "layer":
            announced.append(LayerMeta(ev.layer.digest, ev.layer.size))
        return await self._take_layer(chunks(), announced, host, keep)

    async def _take_layer(
        self, chunks: AsyncIterator[bytes], announced: list[LayerMeta], host: Host, keep: Keep
    ) -> LayerMeta:
        """The layer into the store, which hashes it (the agent's closing LayerMeta must name
        the same bytes), recorded in the index and on the host, then kept by the build; a cancel
        meanwhile waits for all of it (:func:`_finish_taking`). The host installs the layer as
        it sends it and, its last message out, cannot tell a reader that left: a build
        cancelled before the layer was recorded here left it on the host in no store and no
        quota until the collector's grace (7 of 11 cancels 0.3-0.4 s after the install, 160 MiB
        each; session 25). Taken whole, the step counts as done: its layer is the team's, in
        its store count and its build cache, as if the build had been cancelled a step later."""
        limit = self.settings.build_max_layer_mb * MiB

        async def take() -> LayerMeta:
            meta = await self.store.put(chunks, max_bytes=limit)
            if not announced or announced[0].digest != meta.digest:
                raise InternalError(
                    f"the build host's layer does not hash to its announcement ({meta.digest})"
                )
            await layer_svc.record_layer(self.engine, meta, store=self.store)
            await layer_svc.record_on_host(self.engine, host["id"], [meta.digest])
            await keep(meta)
            return meta

        taking = asyncio.ensure_future(take())
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            await _finish_taking(taking, self.build_id)
            raise


async def _finish_taking(taking: asyncio.Future[LayerMeta], build_id: uuid.UUID) -> None:
    """Wait for a cancelled build's layer to be taken, through further cancellations, at most
    ``TAKE_AFTER_CANCEL_S`` (a host that stalls mid-layer is given up on: the collector's grace
    then)."""
    if not await outlast(taking, TAKE_AFTER_CANCEL_S):
        taking.cancel()
        log.warning("event=build_layer_given_up build_id=%s", build_id)
    elif not taking.cancelled() and (e := taking.exception()) is not None:
        log.info("build %s: its layer was not taken after its cancel: %s", build_id, e)


async def _next_event(
    events: AsyncIterator[pb.BuildStepEvent], output: Output, what: str
) -> pb.BuildStepEvent | None:
    """The next event that is not output (output goes to the log as it comes); a nonzero exit
    code fails the step, ``what`` naming its command. None: the stream ended."""
    async for ev in events:
        kind = ev.WhichOneof("event")
        if kind == "output":
            await output(ev.output)
        elif kind == "exit_code" and ev.exit_code != 0:
            raise StepFailed(f"{what} exited with {ev.exit_code}", exit_code=ev.exit_code)
        else:
            return ev
    return None


def _step_error(e: AgentError) -> WarrenError:
    code = e.rpc_code
    if code == grpc.StatusCode.DEADLINE_EXCEEDED.name:
        return StepFailed("the step ran past the build's time limit")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED.name:
        return PayloadTooLarge(f"the step's layer is too large: {e.message}", code="layer_too_large")
    return StepFailed(f"the build host failed the step: {e.message}")
