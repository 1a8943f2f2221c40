"""Hosts: creation, visibility, registration tokens, agent registration, credential refresh,
heartbeats, tags and graceful delete (SPEC §2.9, §3 as amended by DESIGN §4).

Visibility: a platform admin sees every host; anyone else sees only the ``byoc`` hosts of the
team they act for. A host outside that is **404 for every verb**, so its existence never leaks.

Registration tokens and refresh tokens are 64 hex chars; only their SHA-256 is stored. A
registration token is consumed by one conditional UPDATE (``used_at IS NULL AND expires_at >
now``), so two agents racing with one token cannot both register. Refresh rotates
**issue-then-revoke** in two transactions: a crash between them leaves two valid tokens, never
none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db import locks
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
from warren.cp.security.ca import CertificateAuthority
from warren.cp.security.tokens import issue_host_jwt, new_token_hex, sha256_hex
from warren.cp.services import Timestamp, audit
from warren.cp.services.context import AuthContext
from warren.errors import (
    AgentError,
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidState,
    NotFound,
    Unauthorized,
)
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.hosts")

REGISTRATION_TOKEN_TTL = timedelta(hours=1)
REFRESH_TOKEN_TTL = timedelta(days=60)
# Statuses that count as "active" for a host delete (SPEC §2.9 step 2).
ACTIVE_STATUSES = ("pending", "starting", "running", "missing")
# Everything a force delete marks stopped: the active ones plus paused (DESIGN §4).
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
    status: str
    last_heartbeat_at: Timestamp | None = None
    created_by: str
    created_at: Timestamp
    updated_at: Timestamp


class HostWithToken(BaseModel):
    host: Host
    registration_token: str


class DeletePreview(BaseModel):
    host: Host
    sandbox_ids: list[str]


class HostCredentials(BaseModel):
    """Answer to register (201) and refresh (200): SPEC §3.1 step 5 / §3.3."""

    host: Host
    token: str
    refresh_token: str
    cert_pem: str
    key_pem: str
    ca_cert_pem: str


def host_model(row: RowMapping | dict[str, Any], team_name: str | None = None) -> Host:
    """Host JSON: empty strings and zero numbers are left out (SPEC §2.9)."""

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
        status=row["status"],
        last_heartbeat_at=row["last_heartbeat_at"],
        created_by=ids.user_id(row["created_by"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
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


async def create_host(
    engine: AsyncEngine,
    ctx: AuthContext,
    *,
    type: str,
    team_id: str | None = None,
    provider: str = "",
    availability_zone: str = "",
) -> HostWithToken:
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

    async with engine.begin() as conn:
        if team_uuid is not None:
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
        if type == "regular":
            team_uuid = None
        host_uuid = ids.new_uuid()
        now = clock.now()
        row = (
            (
                await conn.execute(
                    hosts.insert()
                    .values(
                        id=host_uuid,
                        type=type,
                        team_id=team_uuid,
                        provider=provider,
                        availability_zone=availability_zone,
                        status="pending",
                        created_by=ctx.user_id,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*hosts.c)
                )
            )
            .mappings()
            .one()
        )
        token = await _new_registration_token(conn, host_uuid, ctx.user_id)
        await audit.record(
            conn,
            ctx,
            team_id=team_uuid or ctx.team_id,
            action="create",
            resource_type="host",
            resource_id=ids.host_id(host_uuid),
            scope="admin",
            metadata={"type": type},
        )
    return HostWithToken(host=host_model(row), registration_token=token)


async def regenerate_token(engine: AsyncEngine, ctx: AuthContext, host_id: str) -> HostWithToken:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with engine.begin() as conn:
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
    return HostWithToken(host=host_model(row), registration_token=token)


# ------------------------------------------------------------------------------ list and get


async def list_hosts(engine: AsyncEngine, ctx: AuthContext) -> list[Host]:
    async with engine.connect() as conn:
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
    async with engine.connect() as conn:
        return host_model(await _load_visible(conn, ctx, host_uuid))


# ---------------------------------------------------------------------------------------- tags


async def list_tags(engine: AsyncEngine, ctx: AuthContext, host_id: str) -> list[str]:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with engine.connect() as conn:
        await _load_visible(conn, ctx, host_uuid)
        q = sa.select(host_tags.c.tag).where(host_tags.c.host_id == host_uuid).order_by(host_tags.c.tag)
        return list((await conn.execute(q)).scalars().all())


def _clean_tag(tag: str) -> str:
    tag = (tag or "").strip()
    if not tag:
        raise InvalidRequest("tag is required")
    if len(tag) > 128:
        raise InvalidRequest("tag is too long (max 128 characters)")
    return tag


async def add_tag(engine: AsyncEngine, ctx: AuthContext, host_id: str, tag: str) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    tag = _clean_tag(tag)
    async with engine.begin() as conn:
        await _load_visible(conn, ctx, host_uuid)
        await conn.execute(pg_insert(host_tags).values(host_id=host_uuid, tag=tag).on_conflict_do_nothing())


async def remove_tag(engine: AsyncEngine, ctx: AuthContext, host_id: str, tag: str) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with engine.begin() as conn:
        await _load_visible(conn, ctx, host_uuid)
        await conn.execute(host_tags.delete().where(host_tags.c.host_id == host_uuid, host_tags.c.tag == tag))


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
    async with engine.connect() as conn:
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
            async with engine.connect() as conn:
                await _load_visible(conn, ctx, host_uuid)  # 404 for a host the caller cannot see
            raise Conflict("this host is already being deleted; retry shortly", code="delete_in_progress")
        await _delete_host_locked(engine, pool, ctx, host_uuid, force=force)


async def _delete_host_locked(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, host_uuid: uuid.UUID, *, force: bool
) -> None:
    async with engine.begin() as conn:
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
    try:
        async with engine.connect() as conn:
            active = await _active_sandbox_ids(conn, host_uuid)
            if active and not force:
                raise Conflict(
                    "host has active sandboxes; use ?force=true to destroy them and delete the host",
                    code="has_active_sandboxes",
                    sandbox_ids=active,
                )
            to_destroy = (
                (
                    await conn.execute(
                        sa.select(sandboxes.c.id).where(
                            sandboxes.c.host_id == host_uuid, sandboxes.c.status.in_(_DESTROY_ON_DELETE)
                        )
                    )
                )
                .scalars()
                .all()
            )
    except BaseException:
        # Refused or failed before anything was destroyed: back into scheduling as it was.
        async with engine.begin() as conn:
            await conn.execute(
                hosts.update()
                .where(hosts.c.id == host_uuid, hosts.c.status == "draining")
                .values(status=before, updated_at=clock.now())
            )
        raise
    hid = ids.host_id(host_uuid)

    if row["address"]:
        client = pool.get(row)

        # Best effort (SPEC §2.9 step 4): the agent may already be gone.
        await asyncio.gather(
            *(client.destroy_best_effort(ids.sandbox_id(sb), why="host delete") for sb in to_destroy)
        )
        try:
            await client.call("Terminate", pb.TerminateRequest(), deadline=10)
        except AgentError as e:
            log.warning("host delete: terminate %s failed: %s", hid, e)

    now = clock.now()
    async with engine.begin() as conn:
        await conn.execute(
            sandboxes.update()
            .where(sandboxes.c.host_id == host_uuid, sandboxes.c.status.in_(FORCE_STOP_STATUSES))
            .values(status="stopped", last_updated=now)
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
            resource_id=hid,
            scope="admin",
            metadata={"force": force, "sandboxes": len(to_destroy)},
        )
    await pool.evict(host_uuid)
    log.info("host deleted host=%s force=%s sandboxes=%d", hid, force, len(to_destroy))


# ------------------------------------------------------------------- agent: register & refresh


@dataclass(frozen=True)
class Specs:
    arch: str = ""
    cpu_cores: int = 0
    memory_mb: int = 0
    disk_gb: int = 0


async def _issue_refresh_token(conn: AsyncConnection, host_uuid: uuid.UUID, now: datetime) -> str:
    token = new_token_hex(32)
    await conn.execute(
        host_refresh_tokens.insert().values(
            id=ids.new_uuid(),
            host_id=host_uuid,
            token_hash=sha256_hex(token),
            expires_at=now + REFRESH_TOKEN_TTL,
            created_at=now,
        )
    )
    return token


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def check_address(address: str) -> None:
    """``address`` must be what the CP can dial: ``host:port`` or ``[v6]:port``, port 1-65535."""
    bad = InvalidRequest(f"invalid address {address!r}: expected host:port (e.g. 10.0.0.5:50051)")
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    else:
        host, sep, port = address.rpartition(":")
        if not _HOSTNAME.match(host):
            raise bad
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad


async def register(
    engine: AsyncEngine,
    ca: CertificateAuthority,
    jwt_secret: str,
    *,
    token: str,
    address: str,
    specs: Specs,
) -> HostCredentials:
    if not token:
        raise InvalidRequest("token is required")
    if not address:
        raise InvalidRequest("address is required")
    check_address(address)  # before the token is consumed: a typo must not burn it
    now = clock.now()
    async with engine.begin() as conn:
        consumed = (
            await conn.execute(
                host_tokens.update()
                .where(
                    host_tokens.c.token_hash == sha256_hex(token),
                    host_tokens.c.used_at.is_(None),
                    host_tokens.c.expires_at > now,
                )
                .values(used_at=now)
                .returning(host_tokens.c.host_id)
            )
        ).first()
        if consumed is None:
            raise Unauthorized("invalid or expired registration token")
        host_uuid: uuid.UUID = consumed.host_id
        hid = ids.host_id(host_uuid)
        cert = ca.issue_host_cert(hid, address)
        row = (
            (
                await conn.execute(
                    hosts.update()
                    .where(hosts.c.id == host_uuid, hosts.c.status == "pending")
                    .values(
                        arch=specs.arch,
                        cpu_cores=specs.cpu_cores,
                        memory_mb=specs.memory_mb,
                        disk_gb=specs.disk_gb,
                        address=address,
                        status="online",
                        last_heartbeat_at=now,
                        updated_at=now,
                        cert_fingerprint=cert.fingerprint,
                        cert_expires_at=cert.expires_at,
                    )
                    .returning(*hosts.c)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound("host already registered or not found")
        refresh = await _issue_refresh_token(conn, host_uuid, now)
    log.info("host registered host=%s address=%s", hid, address)
    return HostCredentials(
        host=host_model(row),
        token=issue_host_jwt(jwt_secret, host_uuid),
        refresh_token=refresh,
        cert_pem=cert.cert_pem,
        key_pem=cert.key_pem,
        ca_cert_pem=ca.cert_pem,
    )


async def _revoke_refresh_token(engine: AsyncEngine, token_id: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            host_refresh_tokens.update()
            .where(host_refresh_tokens.c.id == token_id, host_refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=clock.now())
        )


async def refresh(
    engine: AsyncEngine, ca: CertificateAuthority, jwt_secret: str, refresh_token: str
) -> HostCredentials:
    if not refresh_token:
        raise InvalidRequest("refresh_token is required")
    now = clock.now()
    # Step 1 (own transaction): issue the new token and certificate.
    async with engine.begin() as conn:
        old = (
            await conn.execute(
                sa.select(host_refresh_tokens.c.id, host_refresh_tokens.c.host_id).where(
                    host_refresh_tokens.c.token_hash == sha256_hex(refresh_token),
                    host_refresh_tokens.c.revoked_at.is_(None),
                    host_refresh_tokens.c.expires_at > now,
                )
            )
        ).first()
        if old is None:
            raise Unauthorized("invalid or expired refresh token")
        host_uuid: uuid.UUID = old.host_id
        hid = ids.host_id(host_uuid)
        current = (await conn.execute(sa.select(hosts).where(hosts.c.id == host_uuid))).mappings().first()
        if current is None:
            raise NotFound("host not found")
        cert = ca.issue_host_cert(hid, current["address"])
        row = (
            (
                await conn.execute(
                    hosts.update()
                    .where(hosts.c.id == host_uuid)
                    .values(
                        cert_fingerprint=cert.fingerprint, cert_expires_at=cert.expires_at, updated_at=now
                    )
                    .returning(*hosts.c)
                )
            )
            .mappings()
            .one()
        )
        new_token = await _issue_refresh_token(conn, host_uuid, now)
    # Step 2 (separate transaction): revoke the old one. Failing here leaves both valid.
    await _revoke_refresh_token(engine, old.id)
    log.info("host credentials refreshed host=%s", hid)
    return HostCredentials(
        host=host_model(row),
        token=issue_host_jwt(jwt_secret, host_uuid),
        refresh_token=new_token,
        cert_pem=cert.cert_pem,
        key_pem=cert.key_pem,
        ca_cert_pem=ca.cert_pem,
    )


# ------------------------------------------------------------------------------------ heartbeat

_HEARTBEAT = sa.text(
    """
    UPDATE hosts h
    SET last_heartbeat_at = :now,
        updated_at = :now,
        status = CASE WHEN old.status = 'unreachable' THEN 'online' ELSE h.status END
    FROM (SELECT id, status FROM hosts WHERE id = :id FOR UPDATE) AS old
    WHERE h.id = old.id
    RETURNING old.status AS old_status, h.team_id
    """
)


async def heartbeat(engine: AsyncEngine, authenticated_host: uuid.UUID, host_id: str) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    if host_uuid != authenticated_host:
        raise Forbidden("host ID mismatch")
    async with engine.begin() as conn:
        row = (await conn.execute(_HEARTBEAT, {"now": clock.now(), "id": host_uuid})).first()
        if row is None:
            raise NotFound("host not found")
        if row.old_status == "unreachable":
            log.info("host marked up host=%s", host_id)
            await audit.record(
                conn,
                None,
                team_id=row.team_id,
                action="marked_up",
                resource_type="host",
                resource_id=host_id,
                status="info",
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
    async with engine.begin() as conn:
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
