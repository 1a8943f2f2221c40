"""The agent link: how a host agent joins the control plane and stays in it (docs/spec.md §3 as amended
by docs/design.md §4): registration with a one-time token, credential refresh, heartbeats. The admin
side of hosts (create, list, tags, tokens, delete) is ``warren.cp.services.hosts``.

Registration and refresh tokens are 64 hex chars; only their SHA-256 is stored. A registration
token is consumed by one conditional UPDATE (``used_at IS NULL AND expires_at > now``), so two
agents racing with one token cannot both register. Refresh rotates **issue-then-revoke** in two
transactions: a crash between them leaves two valid tokens, never none.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from datetime import datetime, timedelta
from typing import Annotated

import sqlalchemy as sa
from pydantic import AfterValidator, Field
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.config import RUNTIMES, Runtime
from warren.cp.db.engine import transaction
from warren.cp.db.tables import host_refresh_tokens, host_tokens, hosts
from warren.cp.hosts.byoc_addresses import AddressPolicy, AddressRefused, resolve_checked
from warren.cp.security.ca import CertificateAuthority, IssuedCert, names_a_host
from warren.cp.security.tokens import issue_host_jwt, new_token_hex, sha256_hex
from warren.cp.services import audit
from warren.cp.services.hosts import HostCredentials, host_model
from warren.cp.services.strict import INT32_MAX, INT64_MAX, StrictBody
from warren.cp.services.warm_pool_state import WarmPoolReports
from warren.errors import Forbidden, InvalidRequest, NotFound, TooManyRequests, Unauthorized

log = logging.getLogger("warren.hosts")

REFRESH_TOKEN_TTL = timedelta(days=60)
# What a host that does not say offers: agents from before the runtime tiers ran runc only.
LEGACY_RUNTIMES = ["runc"]


def _distinct(names: list[str]) -> list[str]:
    """Each runtime once, in the platform's order."""
    return [r for r in RUNTIMES if r in names]


# The runtimes a host offers (docs/hosts.md): known names only, 1 to 8 of them, stored once each.
HostRuntimes = Annotated[list[Runtime], Field(min_length=1, max_length=8), AfterValidator(_distinct)]


class RegisterRequest(StrictBody):
    token: str = ""
    address: str = Field(default="", max_length=255)
    arch: str = Field(default="", max_length=64)
    # INT columns: bigger values cannot be stored.
    cpu_cores: int = Field(default=0, ge=0, le=INT32_MAX)
    memory_mb: int = Field(default=0, ge=0, le=INT32_MAX)
    disk_gb: int = Field(default=0, ge=0, le=INT32_MAX)
    # Issue 16: the runtimes it offers; an agent that does not say is taken to run runc.
    runtimes: HostRuntimes | None = None
    # Issue 17: what a create naming no runtime runs on there (the scheduler reads it).
    default_runtime: Runtime | None = None


class HostReport(StrictBody):
    """What an agent reports of itself with each heartbeat (a JSON body; an empty body, as older
    agents send, changes nothing but the heartbeat time). Each field is optional: a value is
    stored only when present, in the ``hosts`` column of the same name (``_heartbeat``). The
    fields belong to the features that read them: the runtimes a host offers (docs/agent.md), its
    warm pools, its data disk (docs/operations.md)."""

    # Issue 16: the runtimes the host offers (the scheduler reads them).
    runtimes: HostRuntimes | None = None
    # Issue 17: its default runtime, what a create naming none runs on there (the scheduler's
    # choice of runtime when the CP's WARREN_DEFAULT_RUNTIME is "host"; docs/hosts.md).
    default_runtime: Runtime | None = None

    # Issue 17: each pool's target and how many sandboxes are ready in it (docs/hosts.md).
    warm_pools: WarmPoolReports | None = None

    # Issue 18: the free bytes of its data directory (0: it cannot write there); the scheduler
    # skips a host below WARREN_HOST_MIN_FREE_DISK_MB (docs/operations.md, "Disk").
    disk_free_bytes: int | None = Field(default=None, ge=0, le=INT64_MAX)


class RefreshRequest(StrictBody):
    refresh_token: str


async def _issue_refresh_token(conn: AsyncConnection, host_uuid: uuid.UUID, now: datetime) -> str:
    # The host's spent tokens go: a (BYOC, tenant-run) agent refreshing in a loop left a row a
    # call for good.
    await conn.execute(
        host_refresh_tokens.delete().where(
            host_refresh_tokens.c.host_id == host_uuid,
            sa.or_(host_refresh_tokens.c.revoked_at.is_not(None), host_refresh_tokens.c.expires_at <= now),
        )
    )
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
        if not _HOSTNAME.match(host) or names_a_host(host):  # a host id is no address
            raise bad
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad


def _credentials(
    ca: CertificateAuthority, jwt_secret: str, row: RowMapping, cert: IssuedCert, refresh_token: str
) -> HostCredentials:
    """What register and refresh answer: a fresh host JWT, the refresh token and the mTLS material."""
    return HostCredentials(
        host=host_model(row),
        token=issue_host_jwt(jwt_secret, row["id"]),
        refresh_token=refresh_token,
        cert_pem=cert.cert_pem,
        key_pem=cert.key_pem,
        ca_cert_pem=ca.cert_pem,
    )


async def _dial_address(engine: AsyncEngine, token: str, address: str, allowed: AddressPolicy) -> str:
    """The address a host registering with ``token`` is dialled at: a BYOC host's (its tenant
    chose it) resolved and checked against the operator's allow-list now, before the token is
    consumed (a 400 leaves it unused), and stored as the IP it was checked as; a platform host's
    as given. An unknown token is left to the consuming statement's 401."""
    q = (
        sa.select(hosts.c.type)
        .select_from(host_tokens.join(hosts, hosts.c.id == host_tokens.c.host_id))
        .where(
            host_tokens.c.token_hash == sha256_hex(token),
            host_tokens.c.used_at.is_(None),
            host_tokens.c.expires_at > clock.now(),
        )
    )
    async with transaction(engine) as conn:
        kind = (await conn.execute(q)).scalar()
    if kind != "byoc":
        return address
    try:
        return await resolve_checked(address, allowed)
    except AddressRefused as e:
        raise InvalidRequest(str(e)) from None


async def register(
    engine: AsyncEngine,
    ca: CertificateAuthority,
    jwt_secret: str,
    req: RegisterRequest,
    *,
    byoc_allowed: AddressPolicy,
) -> HostCredentials:
    token, asked = req.token, req.address
    if not token:
        raise InvalidRequest("token is required")
    if not asked:
        raise InvalidRequest("address is required")
    check_address(asked)  # before the token is consumed: a typo must not burn it
    address = await _dial_address(engine, token, asked, byoc_allowed)
    now = clock.now()
    async with transaction(engine) as conn:
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
                        arch=req.arch,
                        cpu_cores=req.cpu_cores,
                        memory_mb=req.memory_mb,
                        disk_gb=req.disk_gb,
                        runtimes=req.runtimes or LEGACY_RUNTIMES,
                        default_runtime=req.default_runtime,
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
        # The host itself is the actor (its one-time token), so the system's name is on the row.
        await audit.record(
            conn, None, team_id=row["team_id"], action="register", resource_type="host", resource_id=hid,
            scope="admin", metadata={"address": address, "registered_as": asked[:255]},
        )  # fmt: skip
    log.info("host registered host=%s address=%s (as %s)", hid, address, asked)
    return _credentials(ca, jwt_secret, row, cert, refresh)


async def _revoke_refresh_token(engine: AsyncEngine, token_id: uuid.UUID) -> None:
    async with transaction(engine) as conn:
        await conn.execute(host_refresh_tokens.delete().where(host_refresh_tokens.c.id == token_id))


async def refresh(
    engine: AsyncEngine, ca: CertificateAuthority, jwt_secret: str, refresh_token: str
) -> HostCredentials:
    if not refresh_token:
        raise InvalidRequest("refresh_token is required")
    now = clock.now()
    # Step 1 (own transaction): issue the new token and certificate.
    async with transaction(engine) as conn:
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
        _take_refresh(host_uuid)  # before anything is issued: the token stays as it was
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
    return _credentials(ca, jwt_secret, row, cert, new_token)


# ------------------------------------------------------------------------------------ heartbeat


def _heartbeat(host_uuid: uuid.UUID, now: datetime, report: HostReport | None) -> sa.Update:
    """One UPDATE per beat: the beat's times, ``unreachable`` back to ``online`` (the old status
    read under FOR UPDATE, so a concurrent monitor sweep cannot interleave), and each field the
    agent reported into the ``hosts`` column of its name (``HostReport``; none when empty)."""
    old = (
        sa.select(hosts.c.id, hosts.c.status).where(hosts.c.id == host_uuid).with_for_update().subquery("old")
    )
    reported = report.model_dump(mode="json", exclude_none=True) if report is not None else {}
    return (
        hosts.update()
        .where(hosts.c.id == old.c.id)
        .values(
            last_heartbeat_at=now,
            updated_at=now,
            status=sa.case((old.c.status == "unreachable", "online"), else_=hosts.c.status),
            **reported,
        )
        .returning(old.c.status.label("old_status"), hosts.c.team_id)
    )


# Heartbeats a host may send: a burst, then so many a second (an agent beats every 30 s, 1 s
# in tests). A hostile BYOC agent chooses its own pace, and each beat is a write (and may start
# a re-application of its warm pools): beyond this, 429. Per CP process, in memory.
BEAT_BURST = 20.0
BEATS_PER_S = 2.0
_beats: dict[uuid.UUID, tuple[float, float]] = {}  # host -> (tokens, when counted)


# Credential refreshes a host may ask for: a burst, then one a minute. An agent refreshes when
# its 7-day JWT is refused; a hostile BYOC agent chaining refreshes (each a new certificate and
# five statements, ~8 ms of the CP's CPU, against ~2 ms for an API call) had one CP core per
# client, past every team rate limit. Per CP process, in memory; the token stays unspent.
REFRESH_BURST = 5.0
REFRESHES_PER_S = 1 / 60
_refreshes: dict[uuid.UUID, tuple[float, float]] = {}


def _take(
    buckets: dict[uuid.UUID, tuple[float, float]], host_uuid: uuid.UUID, burst: float, rate: float
) -> bool:
    """One token of ``host_uuid``'s bucket (``burst`` at most, refilled at ``rate`` a second);
    False when it has none (the refusal still counts as its last look)."""
    now = time.monotonic()
    tokens, at = buckets.get(host_uuid, (burst, now))
    tokens = min(burst, tokens + (now - at) * rate)
    if len(buckets) > 4096:  # hosts long gone: a full bucket is the same as none
        for full in [h for h, (n, t) in buckets.items() if n + (now - t) * rate >= burst]:
            del buckets[full]
    if tokens < 1:
        buckets[host_uuid] = (tokens, now)
        return False
    buckets[host_uuid] = (tokens - 1, now)
    return True


def _take_beat(host_uuid: uuid.UUID) -> None:
    if not _take(_beats, host_uuid, BEAT_BURST, BEATS_PER_S):
        raise TooManyRequests("heartbeats too frequent", retry_after=1)


def _take_refresh(host_uuid: uuid.UUID) -> None:
    if not _take(_refreshes, host_uuid, REFRESH_BURST, REFRESHES_PER_S):
        raise TooManyRequests("credential refreshes too frequent", retry_after=int(1 / REFRESHES_PER_S))


async def heartbeat(
    engine: AsyncEngine, authenticated_host: uuid.UUID, host_id: str, report: HostReport | None = None
) -> None:
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    if host_uuid != authenticated_host:
        raise Forbidden("host ID mismatch")
    _take_beat(host_uuid)
    async with transaction(engine) as conn:
        row = (await conn.execute(_heartbeat(host_uuid, clock.now(), report))).first()
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
