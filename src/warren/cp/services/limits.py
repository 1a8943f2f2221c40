"""Limits a tenant cannot choose past (issue 11, D5 and D12): the one home of these rules.

- **Per-sandbox maxima** (vCPUs, memory, disk, inactivity timeout): a create asking for more is
  a 400 naming the maximum, never silently clamped.
- **Per-team quotas**: concurrent sandboxes (active = every one not stopped or errored, paused
  included: a paused sandbox keeps its memory on this runtime), their total vCPUs and memory,
  snapshot count and total snapshot size, and what the team's layers hold of the template store
  (``store_mb``: ``services/team_store.py``). Past one: 429 ``quota_exceeded`` with the quota and the usage.
- Both come from :class:`~warren.config.Settings` (``WARREN_MAX_SANDBOX_*``,
  ``WARREN_QUOTA_*``), overridden at run time by a platform admin in ``platform_limits``; a
  team's own ``teams.quota_*`` column (NULL = the platform default) overrides the quota.

The sandbox quotas are checked inside the pending insert (``warren_reserve_sandbox``, migration
0003) under the team's row lock, so parallel creates cannot all pass; the snapshot quotas under
the same lock when the snapshot is recorded. Host capacity lives in ``cp.hosts.scheduler``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import hosts, platform_limits, sandboxes, teams, templates
from warren.cp.services import audit
from warren.cp.services.context import AuthContext
from warren.cp.telemetry import SCHEDULER_DECISIONS
from warren.errors import Forbidden, InvalidRequest, NotFound, ServiceUnavailable, TooManyRequests

MiB = 1024 * 1024
INT32_MAX = 2**31 - 1
# Defaults of a create that names no size; lowered to the maximum if an admin set it below.
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
DEFAULT_DISK_MB = 5120
# Every sandbox but these holds its reservation (a paused one keeps its memory; a "missing" one,
# on an unreachable host, may come back).
INACTIVE = ("stopped", "error")
QUOTAS = ("sandboxes", "vcpus", "memory_mb", "snapshots", "snapshot_mb", "store_mb")


@dataclass(frozen=True)
class PlatformLimits:
    """Platform maxima per sandbox and default team quotas. Field names are the
    ``platform_limits`` keys."""

    max_vcpus: int
    max_memory_mb: int
    max_disk_mb: int
    max_timeout_sec: int
    quota_sandboxes: int
    quota_vcpus: int
    quota_memory_mb: int
    quota_snapshots: int
    quota_snapshot_mb: int
    quota_store_mb: int

    @classmethod
    def from_settings(cls, s: Settings) -> PlatformLimits:
        return cls(
            max_vcpus=s.max_sandbox_vcpus,
            max_memory_mb=s.max_sandbox_memory_mb,
            max_disk_mb=s.max_sandbox_disk_mb,
            max_timeout_sec=s.max_sandbox_timeout_sec,
            quota_sandboxes=s.quota_sandboxes,
            quota_vcpus=s.quota_vcpus,
            quota_memory_mb=s.quota_memory_mb,
            quota_snapshots=s.quota_snapshots,
            quota_snapshot_mb=s.quota_snapshot_mb,
            quota_store_mb=s.quota_store_mb,
        )

    def with_overrides(self, keys: Sequence[str] | None, values: Sequence[int] | None) -> PlatformLimits:
        """These defaults with the admin-set ``platform_limits`` rows on top (unknown keys,
        e.g. from a newer CP, are ignored)."""
        known = {f.name for f in fields(self)}
        over = {k: int(v) for k, v in zip(keys or (), values or (), strict=True) if k in known}
        return PlatformLimits(**{**self.__dict__, **over}) if over else self


LIMIT_KEYS = tuple(f.name for f in fields(PlatformLimits))


async def load(conn: AsyncConnection, settings: Settings) -> PlatformLimits:
    rows = (await conn.execute(sa.select(platform_limits.c.key, platform_limits.c.value))).all()
    defaults = PlatformLimits.from_settings(settings)
    return defaults.with_overrides([r.key for r in rows], [r.value for r in rows])


# ------------------------------------------------------------------------------ per sandbox


@dataclass(frozen=True)
class Shape:
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int


def _at_most(what: str, value: int, maximum: int, unit: str = "") -> None:
    if value > maximum:
        raise InvalidRequest(
            f"{what} {value} exceeds the platform maximum of {maximum}{unit} per sandbox",
            maximum=maximum,
        )


def sandbox_shape(
    lim: PlatformLimits, *, vcpus: int, memory_mb: int, disk_size_mb: int, timeout_sec: int
) -> Shape:
    """The sizes a new sandbox gets: <= 0 means the default (at most the maximum); anything
    above a maximum is a 400. ``timeout_sec`` 0 means the longest the platform allows."""
    if timeout_sec < 0:
        raise InvalidRequest("timeout_sec must be >= 0")
    _at_most("vcpus", vcpus, lim.max_vcpus)
    _at_most("memory_mb", memory_mb, lim.max_memory_mb, " MiB")
    _at_most("disk_size_mb", disk_size_mb, lim.max_disk_mb, " MiB")
    _at_most("timeout_sec", timeout_sec, lim.max_timeout_sec, " s")
    return Shape(
        vcpus=vcpus if vcpus > 0 else min(DEFAULT_VCPUS, lim.max_vcpus),
        memory_mb=memory_mb if memory_mb > 0 else min(DEFAULT_MEMORY_MB, lim.max_memory_mb),
        disk_size_mb=disk_size_mb if disk_size_mb > 0 else min(DEFAULT_DISK_MB, lim.max_disk_mb),
        timeout_sec=timeout_sec or lim.max_timeout_sec,
    )


# ----------------------------------------------------------------------------------- quotas


class Quotas(BaseModel):
    sandboxes: int = Field(description="concurrent sandboxes (all but stopped and errored ones)")
    vcpus: int = Field(description="total vCPUs of those sandboxes")
    memory_mb: int = Field(description="total memory of those sandboxes, MiB")
    snapshots: int = Field(description="snapshots")
    snapshot_mb: int = Field(description="total size of the snapshots, MiB")
    store_mb: int = Field(
        description="what the team's layers hold of the template store (snapshots, builds, imports; "
        "deleted ones until the layer collector removes them), MiB"
    )


class QuotaOverrides(BaseModel):
    """The team's own quotas; null = the platform default."""

    sandboxes: int | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    snapshots: int | None = None
    snapshot_mb: int | None = None
    store_mb: int | None = None


class SandboxMaxima(BaseModel):
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int


class TeamQuotaReport(BaseModel):
    team_id: str
    quotas: Quotas = Field(description="in force: the team's own value, else the platform default")
    overrides: QuotaOverrides
    usage: Quotas
    sandbox_maxima: SandboxMaxima


def team_quotas(lim: PlatformLimits, row: Mapping[Any, Any]) -> Quotas:
    """The quotas in force for a team whose ``quota_*`` columns are in ``row``."""

    def pick(name: str) -> int:
        own = row[f"quota_{name}"]
        return int(own) if own is not None else int(getattr(lim, f"quota_{name}"))

    return Quotas(**{q: pick(q) for q in QUOTAS})


_QUOTA_LABELS = {
    "sandboxes": ("concurrent sandboxes", ""),
    "vcpus": ("vCPUs", ""),
    "memory_mb": ("memory", " MiB"),
    "snapshots": ("snapshots", ""),
    "snapshot_mb": ("snapshot storage", " MiB"),
    "store_mb": ("template store", " MiB"),
}


def quota_exceeded(quota: str, limit: int, in_use: int, asked: int) -> TooManyRequests:
    label, unit = _QUOTA_LABELS[quota]
    return TooManyRequests(
        f"team quota exceeded: {label} quota is {limit}{unit}, {in_use}{unit} in use, this needs "
        f"{asked}{unit} more; free some or ask a platform admin to raise the quota",
        code="quota_exceeded",
        quota=quota,
        limit=limit,
        in_use=in_use,
    )


def reserve_refusal(outcome: str, quotas: Quotas, row: Mapping[Any, Any], shape: Shape) -> TooManyRequests:
    """The 429 for a ``warren_reserve_sandbox`` quota outcome, from its usage columns."""
    SCHEDULER_DECISIONS.labels("refused_quota").inc()
    quota = outcome.removeprefix("quota_")
    in_use = {
        "sandboxes": row["used_sandboxes"], "vcpus": row["used_vcpus"], "memory_mb": row["used_memory_mb"]
    }  # fmt: skip
    asked = {"sandboxes": 1, "vcpus": shape.vcpus, "memory_mb": shape.memory_mb}
    return quota_exceeded(quota, getattr(quotas, quota), int(in_use[quota]), asked[quota])


async def _usage(conn: AsyncConnection, team_uuid: uuid.UUID) -> Quotas:
    sb = (
        await conn.execute(
            sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(sandboxes.c.vcpus), 0),
                sa.func.coalesce(sa.func.sum(sandboxes.c.memory_mb), 0),
            ).where(sandboxes.c.team_id == team_uuid, sandboxes.c.status.notin_(INACTIVE))
        )
    ).one()  # fmt: skip
    n_snap, snap_bytes = await snapshot_usage(conn, team_uuid)
    from warren.cp.services import team_store  # it bounds by this module's quotas: imported late

    store_bytes = await team_store.held_bytes(conn, team_uuid)
    return Quotas(
        sandboxes=sb[0], vcpus=sb[1], memory_mb=sb[2], snapshots=n_snap, snapshot_mb=-(-snap_bytes // MiB),
        store_mb=-(-store_bytes // MiB),
    )  # fmt: skip


async def snapshot_usage(
    conn: AsyncConnection, team_uuid: uuid.UUID, *, besides: uuid.UUID | None = None
) -> tuple[int, int]:
    """The team's snapshot count and bytes (without ``besides``, a snapshot being replaced)."""
    q = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(templates.c.size_bytes), 0)).where(
        templates.c.team_id == team_uuid, templates.c.type == "snapshot"
    )
    if besides is not None:
        q = q.where(templates.c.id != besides)
    n, size = (await conn.execute(q)).one()
    return int(n), int(size)


async def team_report(engine: AsyncEngine, settings: Settings, team_uuid: uuid.UUID) -> TeamQuotaReport:
    """Quotas in force, the team's own values and its usage (for members and admins alike)."""
    async with autocommit(engine) as conn:
        lim = await load(conn, settings)
        row = (
            (
                await conn.execute(
                    sa.select(teams).where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound("team not found")
        usage = await _usage(conn, team_uuid)
    return TeamQuotaReport(
        team_id=ids.team_id(team_uuid),
        quotas=team_quotas(lim, row),
        overrides=QuotaOverrides(**{q: row[f"quota_{q}"] for q in QUOTAS}),
        usage=usage,
        sandbox_maxima=SandboxMaxima(
            vcpus=lim.max_vcpus, memory_mb=lim.max_memory_mb, disk_size_mb=lim.max_disk_mb,
            timeout_sec=lim.max_timeout_sec,
        ),
    )  # fmt: skip


# ------------------------------------------------------------------------------------ admin


class PlatformLimitsModel(BaseModel):
    max_vcpus: int = Field(description="vCPUs per sandbox")
    max_memory_mb: int = Field(description="memory per sandbox, MiB")
    max_disk_mb: int = Field(description="disk per sandbox, MiB (a tmpfs inside the memory limit)")
    max_timeout_sec: int = Field(description="inactivity timeout per sandbox, seconds")
    quota_sandboxes: int = Field(description="default team quota: concurrent sandboxes")
    quota_vcpus: int = Field(description="default team quota: total vCPUs")
    quota_memory_mb: int = Field(description="default team quota: total memory, MiB")
    quota_snapshots: int = Field(description="default team quota: snapshots")
    quota_snapshot_mb: int = Field(description="default team quota: total snapshot size, MiB")
    quota_store_mb: int = Field(description="default team quota: the team's layers in the store, MiB")


# Maxima must allow at least one sandbox; quotas may be 0 (the team may create nothing).
_MIN = {"max_vcpus": 1, "max_memory_mb": 16, "max_disk_mb": 16, "max_timeout_sec": 1}


def _check_value(key: str, value: int) -> int:
    lo = _MIN.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= INT32_MAX:
        raise InvalidRequest(f"{key} must be an integer from {lo} to {INT32_MAX}")
    return value


def _require_admin(ctx: AuthContext) -> None:
    # users.is_admin as read from the database on this request (not a token claim).
    if not ctx.is_admin:
        raise Forbidden("admin access required")


async def get_platform_limits(engine: AsyncEngine, settings: Settings) -> PlatformLimitsModel:
    async with autocommit(engine) as conn:
        return PlatformLimitsModel(**(await load(conn, settings)).__dict__)


async def set_platform_limits(
    engine: AsyncEngine, settings: Settings, ctx: AuthContext, changes: Mapping[str, int | None]
) -> PlatformLimitsModel:
    """Platform admins only. A value sets the key; None returns it to the built-in (Settings)
    default."""
    _require_admin(ctx)
    for key, value in changes.items():
        if key not in LIMIT_KEYS:
            raise InvalidRequest(f"unknown limit {key!r}")
        if value is not None:
            _check_value(key, value)
    now = clock.now()
    async with transaction(engine) as conn:
        for key, value in changes.items():
            if value is None:
                await conn.execute(sa.delete(platform_limits).where(platform_limits.c.key == key))
            else:
                stmt = pg_insert(platform_limits).values(key=key, value=value, updated_at=now)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["key"], set_={"value": value, "updated_at": now}
                    )
                )
        await audit.record(
            conn, ctx, team_id=None, action="update", resource_type="platform_limits", scope="admin",
            metadata={"changes": dict(changes)},
        )  # fmt: skip
        return PlatformLimitsModel(**(await load(conn, settings)).__dict__)


async def set_team_quotas(
    engine: AsyncEngine,
    settings: Settings,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    changes: Mapping[str, int | None],
) -> TeamQuotaReport:
    """Platform admins only. A value sets the team's quota; None returns it to the platform
    default. Lowering a quota below the usage stops new creates, nothing more."""
    _require_admin(ctx)
    values: dict[str, int | None] = {}
    for q, value in changes.items():
        if q not in QUOTAS:
            raise InvalidRequest(f"unknown quota {q!r}")
        values[f"quota_{q}"] = None if value is None else _check_value(q, value)
    async with transaction(engine) as conn:
        if values:
            done = await conn.execute(
                sa.update(teams).where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None)).values(**values)
            )
        else:
            done = await conn.execute(
                sa.select(teams.c.id).where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
            )
        missing = done.rowcount == 0 if values else done.first() is None
        if missing:
            raise NotFound("team not found")
        await audit.record(
            conn, ctx, team_id=team_uuid, action="update", resource_type="team_quotas", scope="admin",
            resource_id=ids.team_id(team_uuid), metadata={"changes": dict(changes)},
        )  # fmt: skip
    return await team_report(engine, settings, team_uuid)


# -------------------------------------------------------------------------------- snapshots


async def check_snapshot_room(
    conn: AsyncConnection, lim: PlatformLimits, team_uuid: uuid.UUID, *, replacing: uuid.UUID | None,
    new_bytes: int,
) -> None:  # fmt: skip
    """429 unless one more snapshot of ``new_bytes`` fits the team's snapshot quotas (a
    snapshot being overwritten does not count). Before the agent writes it ``new_bytes`` is 0:
    the team must be below both quotas; once written, its real size must fit."""
    row = (await conn.execute(sa.select(teams).where(teams.c.id == team_uuid))).mappings().one()
    quotas = team_quotas(lim, row)
    n, used = await snapshot_usage(conn, team_uuid, besides=replacing)
    if n + 1 > quotas.snapshots:
        raise quota_exceeded("snapshots", quotas.snapshots, n, 1)
    limit_bytes = quotas.snapshot_mb * MiB
    if used + max(new_bytes, 1) > limit_bytes:
        raise quota_exceeded("snapshot_mb", quotas.snapshot_mb, -(-used // MiB), -(-new_bytes // MiB))


async def check_host_disk(
    conn: AsyncConnection, settings: Settings, host_uuid: uuid.UUID, disk_mb: int
) -> None:
    """503 ``no_capacity`` unless the host's disk (``disk_gb`` x ``WARREN_OVERCOMMIT_DISK``) holds
    one more full copy of a sandbox disk of ``disk_mb`` next to the snapshots already on it. A
    host that reported no disk size is not bounded."""
    held = (
        sa.select(sa.func.coalesce(sa.func.sum(templates.c.size_bytes), 0))
        .where(templates.c.host_id == host_uuid)
        .scalar_subquery()
    )
    row = (await conn.execute(sa.select(hosts.c.disk_gb, held).where(hosts.c.id == host_uuid))).first()
    if row is None or row[0] <= 0:
        return
    if row[1] + disk_mb * MiB > row[0] * 1024 * MiB * settings.overcommit_disk:
        raise ServiceUnavailable(
            "the sandbox's host has no disk room for another snapshot; delete some", code="no_capacity"
        )
