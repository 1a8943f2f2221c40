"""Hosts, the admin side: creation, visibility, registration tokens, tags and graceful delete
(docs/spec.md §2.9 as amended by docs/design.md §4). How an agent registers, refreshes its credentials and
heartbeats is ``warren.cp.services.host_link``.

Visibility: a platform admin sees every host; anyone else sees only the ``byoc`` hosts of the
team they act for. A host outside that is **404 for every verb**, so its existence never leaks.

A registration token is 64 hex chars; only its SHA-256 is stored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db import end_reasons, locks
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import (
    host_refresh_tokens,
    host_tags,
    host_tokens,
    hosts,
    sandboxes,
    teams,
    users_teams,
)
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.security.tokens import new_token_hex, sha256_hex
from warren.cp.services import Timestamp, audit
from warren.cp.services.context import AuthContext
from warren.cp.services.strict import StrictBody
from warren.cp.services.warm_pool_state import WarmPool, pool_views
from warren.errors import (
    AgentError,
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidState,
    NotFound,
    TooManyRequests,
)
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.hosts")

REGISTRATION_TOKEN_TTL = timedelta(hours=1)
# What a BYOC team's owner writes to the host list (every text was kept whole, a MiB each, on
# any number of pending hosts, and every list read them all).
MAX_LABEL = 128  # provider, availability zone, a tag
MAX_TAGS_PER_HOST = 64
MAX_HOSTS_PER_TEAM = 1000
# Statuses that count as "active" for a host delete (docs/spec.md §2.9 step 2).
ACTIVE_STATUSES = ("pending", "starting", "running", "missing")
# Everything a force delete marks stopped: the active ones plus paused (docs/design.md §4).
FORCE_STOP_STATUSES = (*ACTIVE_STATUSES, "paused")
# Sandboxes a force delete destroys on the agent before terminating it.
_DESTROY_ON_DELETE = ("running", "starting", "paused", "missing", "pending")


class Host(BaseModel):
    id: str
    type: Literal["regular", "byoc"]
    team_id: str | None = None
    team_name: str | None = None
    provider: str | None = None
    availability_zone: str | None = None
    arch: str | None = None
    cpu_cores: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    address: str | None = None
    # The sandbox runtimes it offers, as it last reported them (docs/hosts.md).
    runtimes: list[str] | None = None
    # What a create naming no runtime runs on there, as its agent reported it (issue 17).
    default_runtime: str | None = None
    status: str
    last_heartbeat_at: Timestamp | None = None
    created_by: str
    created_at: Timestamp
    updated_at: Timestamp
    # Issue 17: each warm pool's target and how many are ready (as of the last heartbeat).
    warm_pools: list[WarmPool] | None = None


class HostWithToken(BaseModel):
    host: Host
    registration_token: str


class CreateHostRequest(StrictBody):
    type: Literal["regular", "byoc"]
    team_id: str | None = None
    provider: str = ""
    availability_zone: str = ""


class TagRequest(StrictBody):
    tag: str


class DeletePreview(BaseModel):
    host: Host
    sandbox_ids: list[str]


class HostCredentials(BaseModel):
    """Answer to register (201) and refresh (200): docs/spec.md §3.1 step 5 / §3.3."""

    host: Host
    token: str
    refresh_token: str
    cert_pem: str
    key_pem: str
    ca_cert_pem: str


def host_model(row: RowMapping | dict[str, Any], team_name: str | None = None) -> Host:
    """Host JSON: empty strings and zero numbers are left out (docs/spec.md §2.9)."""

    def s(v: str) -> str | None:
        return v or None

    def n(v: int) -> int | None:
        return v or None

    return Host(
        id=ids.host_id(row["id"]),
        type=row["type"],
        team_id=ids.team_id(row["team_id"]) if row["team_id"] else None,
        team_name=team_name,
        provider=s(row["provider"]),
        availability_zone=s(row["availability_zone"]),
        arch=s(row["arch"]),
        cpu_cores=n(row["cpu_cores"]),
        memory_mb=n(row["memory_mb"]),
        disk_gb=n(row["disk_gb"]),
        address=s(row["address"]),
        runtimes=list(row.get("runtimes") or []) or None,
        default_runtime=row.get("default_runtime"),
        status=row["status"],
        last_heartbeat_at=row["last_heartbeat_at"],
        created_by=ids.user_id(row["created_by"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        warm_pools=pool_views(row),
    )


# --------------------------------------------------------------------------------- visibility


def _visible(ctx: AuthContext, row: RowMapping) -> bool:
    if ctx.is_admin:
        return True
    return row["type"] == "byoc" and ctx.team_id is not None and row["team_id"] == ctx.team_id


async def _load_visible(
    conn: AsyncConnection, ctx: AuthContext, host_uuid: uuid.UUID, *, for_update: bool = False
) -> RowMapping:
    q = sa.select(hosts).where(hosts.c.id == host_uuid)
    row = (await conn.execute(q.with_for_update() if for_update else q)).mappings().first()
    if row is None or not _visible(ctx, row):
        raise NotFound("host not found")
    return row


def _require_manager(ctx: AuthContext, action: str) -> None:
    """Non-admins need owner/admin in the host's team (the visible host's team is ctx's team)."""
    if not ctx.is_admin and not ctx.is_manager:
        raise Forbidden(f"only team owners and admins can {action}")


# ---------------------------------------------------------------------------- create & token


async def _new_registration_token(conn: AsyncConnection, host_uuid: uuid.UUID, created_by: uuid.UUID) -> str:
    token = new_token_hex(32)
    now = clock.now()
    # A regenerated token supersedes any earlier unused one.
    await conn.execute(
        host_tokens.update()
        .where(
            host_tokens.c.host_id == host_uuid,
            host_tokens.c.used_at.is_(None),
            host_tokens.c.expires_at > now,
        )
        .values(expires_at=now)
    )
    await conn.execute(
        host_tokens.insert().values(
            id=ids.new_uuid(),
            host_id=host_uuid,
            token_hash=sha256_hex(token),
            created_by=created_by,
            created_at=now,
            expires_at=now + REGISTRATION_TOKEN_TTL,
        )
    )
    return token


def _team_of_new_host(ctx: AuthContext, type: str, team_id: str | None) -> uuid.UUID | None:
    """The checks a create makes before the database: who may create what, and the team ID."""
    if ctx.user_id is None:
        raise Forbidden("a user is required to create hosts")
    if type not in ("regular", "byoc"):
        raise InvalidRequest('type must be "regular" or "byoc"')
    team_uuid: uuid.UUID | None = None
    if team_id:
        team_uuid = ids.parse_id(ids.Kind.TEAM, team_id)
    if type == "regular":
        if not ctx.is_admin:
            raise Forbidden("only admins can create regular hosts")
    elif team_uuid is None:
        raise InvalidRequest("team_id is required for byoc hosts")
    return team_uuid


async def _check_team_takes_host(
    conn: AsyncConnection, ctx: AuthContext, type: str, team_uuid: uuid.UUID
) -> None:
    """The named team is live and has BYOC on, and a non-admin manages it (for a byoc host)."""
    team = (
        await conn.execute(
            sa.select(teams.c.is_byoc).where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
        )
    ).first()
    if type == "byoc" and not ctx.is_admin:
        role = (
            await conn.execute(
                sa.select(users_teams.c.role).where(
                    users_teams.c.team_id == team_uuid, users_teams.c.user_id == ctx.user_id
                )
            )
        ).scalar()
        if role not in ("owner", "admin"):
            raise Forbidden("only team owners and admins can create hosts")
    if team is None:
        raise InvalidRequest("team not found")
    if not team.is_byoc:
        raise Forbidden("BYOC is not enabled for this team")


async def _check_room_for_host(conn: AsyncConnection, team_uuid: uuid.UUID) -> None:
    # The team's row locked: two creates at the bound cannot both pass the count.
    await conn.execute(sa.select(teams.c.id).where(teams.c.id == team_uuid).with_for_update())
    held = (
        await conn.execute(sa.select(sa.func.count()).select_from(hosts).where(hosts.c.team_id == team_uuid))
    ).scalar_one()
    if held >= MAX_HOSTS_PER_TEAM:
        raise TooManyRequests(
            f"the team has {held} hosts (at most {MAX_HOSTS_PER_TEAM}); delete one first",
            code="quota_exceeded",
        )


async def _insert_pending_host(
    conn: AsyncConnection,
    *,
    type: str,
    team_uuid: uuid.UUID | None,
    provider: str,
    availability_zone: str,
    created_by: uuid.UUID,
) -> RowMapping:
    now = clock.now()
    result = await conn.execute(
        hosts.insert()
        .values(
            id=ids.new_uuid(),
            type=type,
            team_id=team_uuid,
            provider=provider,
            availability_zone=availability_zone,
            status="pending",
            created_by=created_by,
            created_at=now,
            updated_at=now,
        )
        .returning(*hosts.c)
    )
    return result.mappings().one()


async def create_host(
    engine: AsyncEngine,
    ctx: AuthContext,
    *,
    type: str,
    team_id: str | None = None,
    provider: str = "",
    availability_zone: str = "",
) -> HostWithToken:
    """A ``pending`` host and its one-time registration token."""
    team_uuid = _team_of_new_host(ctx, type, team_id)
    assert ctx.user_id is not None  # _team_of_new_host refused the request otherwise
    if len(provider) > MAX_LABEL or len(availability_zone) > MAX_LABEL:
        raise InvalidRequest(f"provider and availability_zone are at most {MAX_LABEL} characters")
    async with transaction(engine) as conn:
        if team_uuid is not None:
            await _check_team_takes_host(conn, ctx, type, team_uuid)
            if type == "byoc":
                await _check_room_for_host(conn, team_uuid)
        if type == "regular":
            team_uuid = None
        row = await _insert_pending_host(
            conn, type=type, team_uuid=team_uuid, provider=provider,
            availability_zone=availability_zone, created_by=ctx.user_id,
        )  # fmt: skip
        token = await _new_registration_token(conn, row["id"], ctx.user_id)
        await audit.record(
            conn, ctx, team_id=team_uuid or ctx.team_id, action="create", resource_type="host",
            resource_id=ids.host_id(row["id"]), scope="admin", metadata={"type": type},
        )  # fmt: skip
    return HostWithToken(host=host_model(row), registration_token=token)


async def regenerate_token(engine: AsyncEngine, ctx: AuthContext, host_id: str) -> HostWithToken:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with transaction(engine) as conn:
        row = await _load_visible(conn, ctx, host_uuid)
        _require_manager(ctx, "regenerate registration tokens")
        if ctx.user_id is None:
            raise Forbidden("a user is required")
        # Lock the row so a registration racing with us sees a consistent status.
        status = (
            await conn.execute(sa.select(hosts.c.status).where(hosts.c.id == host_uuid).with_for_update())
        ).scalar()
        if status != "pending":
            raise InvalidState(f"invalid state: host is {status}; only pending hosts take a new token")
        token = await _new_registration_token(conn, host_uuid, ctx.user_id)
        await _audit_host(conn, ctx, row, "regenerate_token")
    return HostWithToken(host=host_model(row), registration_token=token)


# ------------------------------------------------------------------------------ list and get


async def list_hosts(engine: AsyncEngine, ctx: AuthContext) -> list[Host]:
    async with autocommit(engine) as conn:
        if ctx.is_admin:
            q = sa.select(hosts, teams.c.name.label("team_name")).select_from(
                hosts.outerjoin(teams, teams.c.id == hosts.c.team_id)
            )
            rows = (await conn.execute(q.order_by(hosts.c.created_at.desc(), hosts.c.id))).mappings().all()
            return [host_model(r, r["team_name"]) for r in rows]
        if ctx.team_id is None:
            return []
        q2 = sa.select(hosts).where(hosts.c.type == "byoc", hosts.c.team_id == ctx.team_id)
        rows = (await conn.execute(q2.order_by(hosts.c.created_at.desc(), hosts.c.id))).mappings().all()
        return [host_model(r) for r in rows]


async def get_host(engine: AsyncEngine, ctx: AuthContext, host_id: str) -> Host:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with autocommit(engine) as conn:
        return host_model(await _load_visible(conn, ctx, host_uuid))


# ---------------------------------------------------------------------------------------- tags


async def list_tags(engine: AsyncEngine, ctx: AuthContext, host_id: str) -> list[str]:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with autocommit(engine) as conn:
        await _load_visible(conn, ctx, host_uuid)
        q = sa.select(host_tags.c.tag).where(host_tags.c.host_id == host_uuid).order_by(host_tags.c.tag)
        return list((await conn.execute(q)).scalars().all())


def _clean_tag(tag: str) -> str:
    tag = (tag or "").strip()
    if not tag:
        raise InvalidRequest("tag is required")
    if len(tag) > MAX_LABEL:
        raise InvalidRequest(f"tag is too long (max {MAX_LABEL} characters)")
    return tag


async def add_tag(engine: AsyncEngine, ctx: AuthContext, host_id: str, tag: str) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    tag = _clean_tag(tag)
    async with transaction(engine) as conn:
        row = await _load_visible(conn, ctx, host_uuid)
        await conn.execute(sa.select(hosts.c.id).where(hosts.c.id == host_uuid).with_for_update())
        others = sa.select(sa.func.count()).where(host_tags.c.host_id == host_uuid, host_tags.c.tag != tag)
        if (await conn.execute(others)).scalar_one() >= MAX_TAGS_PER_HOST:
            raise TooManyRequests(f"a host has at most {MAX_TAGS_PER_HOST} tags", code="quota_exceeded")
        await conn.execute(pg_insert(host_tags).values(host_id=host_uuid, tag=tag).on_conflict_do_nothing())
        await _audit_host(conn, ctx, row, "add_tag", {"tag": tag})


async def remove_tag(engine: AsyncEngine, ctx: AuthContext, host_id: str, tag: str) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with transaction(engine) as conn:
        row = await _load_visible(conn, ctx, host_uuid)
        await conn.execute(host_tags.delete().where(host_tags.c.host_id == host_uuid, host_tags.c.tag == tag))
        await _audit_host(conn, ctx, row, "remove_tag", {"tag": tag[:128]})


async def _audit_host(
    conn: AsyncConnection,
    ctx: AuthContext,
    row: RowMapping,
    action: str,
    metadata: dict[str, Any] | None = None,
) -> None:
    """A host change's audit row: under the host's team (a BYOC host) or the caller's."""
    await audit.record(
        conn, ctx, team_id=row["team_id"] or ctx.team_id, action=action, resource_type="host",
        resource_id=ids.host_id(row["id"]), scope="admin", metadata=metadata,
    )  # fmt: skip


# -------------------------------------------------------------------------------------- delete


async def _active_sandbox_ids(conn: AsyncConnection, host_uuid: uuid.UUID) -> list[str]:
    q = (
        sa.select(sandboxes.c.id)
        .where(sandboxes.c.host_id == host_uuid, sandboxes.c.status.in_(ACTIVE_STATUSES))
        .order_by(sandboxes.c.created_at, sandboxes.c.id)
    )
    return [ids.sandbox_id(u) for u in (await conn.execute(q)).scalars().all()]


async def delete_preview(engine: AsyncEngine, ctx: AuthContext, host_id: str) -> DeletePreview:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with autocommit(engine) as conn:
        row = await _load_visible(conn, ctx, host_uuid)
        return DeletePreview(host=host_model(row), sandbox_ids=await _active_sandbox_ids(conn, host_uuid))


async def delete_host(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, host_id: str, *, force: bool = False
) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    # One delete of a host at a time, across replicas: another one meanwhile is a 409. So a
    # `draining` status found here was left by a delete that died midway, and only the delete
    # that drained the host puts it back.
    async with locks.held(engine, locks.HOST_DELETE_NS, host_uuid) as got:
        if not got:
            async with autocommit(engine) as conn:
                await _load_visible(conn, ctx, host_uuid)  # 404 for a host the caller cannot see
            raise Conflict("this host is already being deleted; retry shortly", code="delete_in_progress")
        await _delete_host_locked(engine, pool, ctx, host_uuid, force=force)


async def _delete_host_locked(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, host_uuid: uuid.UUID, *, force: bool
) -> None:
    row, before = await _start_draining(engine, ctx, host_uuid)
    to_destroy = await _sandboxes_to_destroy(engine, host_uuid, force=force, restore_status=before)
    if row["address"]:
        await _stop_on_agent(pool, row, to_destroy)
    await _remove_host_rows(engine, ctx, row, force=force, destroyed=len(to_destroy))
    await pool.evict(host_uuid)
    log.info("host deleted host=%s force=%s sandboxes=%d", ids.host_id(host_uuid), force, len(to_destroy))


async def _start_draining(
    engine: AsyncEngine, ctx: AuthContext, host_uuid: uuid.UUID
) -> tuple[RowMapping, str]:
    """Take the host out of scheduling; returns its row and the status to restore on refusal."""
    async with transaction(engine) as conn:
        row = await _load_visible(conn, ctx, host_uuid, for_update=True)
        _require_manager(ctx, "delete hosts")
        # A leftover `draining` host was schedulable before; the monitor marks it down again if
        # its heartbeats have stopped.
        before = "online" if row["status"] == "draining" else row["status"]
        # Out of scheduling first (committed, under the row lock that sandbox creates share):
        # no create can land on the host between the count below and the delete.
        await conn.execute(
            hosts.update().where(hosts.c.id == host_uuid).values(status="draining", updated_at=clock.now())
        )
    return row, before


async def _sandboxes_to_destroy(
    engine: AsyncEngine, host_uuid: uuid.UUID, *, force: bool, restore_status: str
) -> list[uuid.UUID]:
    """The sandboxes to destroy on the agent; 409 ``has_active_sandboxes`` without ``force``.
    A refusal (or failure) puts the host back into scheduling as it was."""
    try:
        async with autocommit(engine) as conn:
            active = await _active_sandbox_ids(conn, host_uuid)
            if active and not force:
                raise Conflict(
                    "host has active sandboxes; use ?force=true to destroy them and delete the host",
                    code="has_active_sandboxes",
                    sandbox_ids=active,
                )
            q = sa.select(sandboxes.c.id).where(
                sandboxes.c.host_id == host_uuid, sandboxes.c.status.in_(_DESTROY_ON_DELETE)
            )
            return list((await conn.execute(q)).scalars().all())
    except BaseException:
        # Refused or failed before anything was destroyed: back into scheduling as it was.
        async with transaction(engine) as conn:
            await conn.execute(
                hosts.update()
                .where(hosts.c.id == host_uuid, hosts.c.status == "draining")
                .values(status=restore_status, updated_at=clock.now())
            )
        raise


async def _stop_on_agent(pool: HostClientPool, row: RowMapping, to_destroy: list[uuid.UUID]) -> None:
    """Best effort (docs/spec.md §2.9 step 4): the agent may already be gone."""
    client = pool.get(row)
    await asyncio.gather(
        *(client.destroy_best_effort(ids.sandbox_id(sb), why="host delete") for sb in to_destroy)
    )
    try:
        await client.stub.Terminate(pb.TerminateRequest(), timeout=10)
    except AgentError as e:
        log.warning("host delete: terminate %s failed: %s", ids.host_id(row["id"]), e)


async def _remove_host_rows(
    engine: AsyncEngine, ctx: AuthContext, row: RowMapping, *, force: bool, destroyed: int
) -> None:
    """Its sandboxes stopped, its refresh tokens revoked, the host row gone, and the audit entry."""
    host_uuid = row["id"]
    now = clock.now()
    async with transaction(engine) as conn:
        await conn.execute(
            sandboxes.update()
            .where(sandboxes.c.host_id == host_uuid, sandboxes.c.status.in_(FORCE_STOP_STATUSES))
            .values(status="stopped", last_updated=now, end_reason=end_reasons.HOST_DELETED)
        )
        await conn.execute(
            host_refresh_tokens.update()
            .where(host_refresh_tokens.c.host_id == host_uuid, host_refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await conn.execute(hosts.delete().where(hosts.c.id == host_uuid))
        await audit.record(
            conn,
            ctx,
            team_id=row["team_id"] or ctx.team_id,
            action="delete",
            resource_type="host",
            resource_id=ids.host_id(host_uuid),
            scope="admin",
            metadata={"force": force, "sandboxes": destroyed},
        )


SYSTEM_USER_EMAIL = "system@warren.local"


async def _system_user(conn: AsyncConnection) -> uuid.UUID:
    """The user that records rows the platform makes itself (``created_by`` is NOT NULL). It has
    no password and no team, so nobody can log in as it."""
    from warren.cp.db.tables import users

    existing = (await conn.execute(sa.select(users.c.id).where(users.c.email == SYSTEM_USER_EMAIL))).scalar()
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    uid = ids.new_uuid()
    await conn.execute(
        pg_insert(users)
        .values(id=uid, email=SYSTEM_USER_EMAIL, name="Warren system", password_hash=None)
        .on_conflict_do_nothing(index_elements=["email"])
    )
    return (await conn.execute(sa.select(users.c.id).where(users.c.email == SYSTEM_USER_EMAIL))).scalar_one()  # type: ignore[no-any-return]


async def create_local_host(engine: AsyncEngine, *, provider: str = "local") -> tuple[str, str]:
    """A regular host and its one-time registration token, made by the platform itself (no
    request, no user): how ``warren up`` adds the machine it runs on. Returns (host id, token)."""
    async with transaction(engine) as conn:
        creator = await _system_user(conn)
        host_uuid = ids.new_uuid()
        now = clock.now()
        await conn.execute(
            hosts.insert().values(
                id=host_uuid, type="regular", provider=provider, status="pending",
                created_by=creator, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        token = await _new_registration_token(conn, host_uuid, creator)
        await audit.record(
            conn, None, team_id=None, action="create", resource_type="host",
            resource_id=ids.host_id(host_uuid), scope="admin", metadata={"type": "regular", "local": True},
        )  # fmt: skip
    return ids.host_id(host_uuid), token
