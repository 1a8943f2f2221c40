"""Reading the audit log (docs/api.md, "Audit log"). Records are written by ``services/audit.py``
and never changed: nothing here or anywhere in the API updates or deletes one.

Who sees what: a team's owners and admins (signed in, by their role in that team) see every
record of their team; platform admins see every record, of any team or none, and may narrow to
one team with ``team_id``. Members and API keys are refused (403). Pages are keyset pages, newest
first, on ``(created_at, id)``; the cursor is opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import audit_logs
from warren.cp.services.context import AuthContext, require_team
from warren.errors import Forbidden, InvalidRequest

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_FILTER_CHARS = 200
ACTOR_TYPES = ("user", "api_key", "system", "sandbox_token")


class Actor(BaseModel):
    type: str
    id: str
    name: str


class AuditRecord(BaseModel):
    id: str
    team_id: str | None
    actor: Actor
    action: str
    resource_type: str
    resource_id: str
    scope: str
    status: str  # the result: success | info | warning | error
    ip: str | None = None
    request_id: str | None = None
    metadata: dict[str, Any]
    created_at: datetime


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None = None


class AuditFilter(BaseModel):
    """What a caller may narrow by; each string at most ``MAX_FILTER_CHARS`` (checked here)."""

    team_id: str | None = None
    actor: str | None = None  # an actor id (usr-…, key-…, sb-…) or an actor type (user, system, …)
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _team_scope(ctx: AuthContext, team_id: str | None) -> uuid.UUID | None:
    """The one team the caller may read (None: all, for a platform admin without ``team_id``)."""
    wanted = ids.parse_id(ids.Kind.TEAM, team_id, what="team_id") if team_id else None
    if ctx.is_admin and ctx.user_id is not None:
        return wanted
    if ctx.kind not in ("jwt", "session") or ctx.user_id is None:
        raise Forbidden("the audit log is for team owners and admins signed in (not API keys)")
    own = require_team(ctx)
    if not ctx.is_manager:
        raise Forbidden("only team owners and admins may read the audit log")
    if wanted is not None and wanted != own:
        raise Forbidden("team_id names another team (only platform admins may choose)")
    return own


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if len(cursor) > MAX_FILTER_CHARS:
        raise InvalidRequest("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, rid = raw.partition("|")
        at = datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, uuid.UUID(rid)
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest("invalid cursor") from e


def _aware(at: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def _conditions(team: uuid.UUID | None, f: AuditFilter) -> list[sa.ColumnElement[bool]]:
    for value in (f.actor, f.action, f.resource_type, f.resource_id):
        if value is not None and len(value) > MAX_FILTER_CHARS:
            raise InvalidRequest(f"filters are at most {MAX_FILTER_CHARS} characters")
    f = f.model_copy(update={"since": _aware(f.since), "until": _aware(f.until)})
    if f.since and f.until and f.since > f.until:
        raise InvalidRequest("since is after until")
    c = audit_logs.c
    where: list[sa.ColumnElement[bool]] = []
    if team is not None:
        where.append(c.team_id == team)
    if f.actor:
        where.append(c.actor_type == f.actor if f.actor in ACTOR_TYPES else c.actor_id == f.actor)
    if f.action:
        where.append(c.action == f.action)
    if f.resource_type:
        where.append(c.resource_type == f.resource_type)
    if f.resource_id:
        where.append(c.resource_id == f.resource_id)
    if f.since:
        where.append(c.created_at >= f.since)
    if f.until:
        where.append(c.created_at < f.until)
    return where


def _record(r: Any) -> AuditRecord:
    meta = dict(r.metadata or {})
    ip, rid = meta.get("ip"), meta.get("request_id")
    return AuditRecord(
        id=ids.format_id(ids.Kind.AUDIT_LOG, r.id),
        team_id=ids.team_id(r.team_id) if r.team_id is not None else None,
        actor=Actor(type=r.actor_type, id=r.actor_id, name=r.actor_name),
        action=r.action,
        resource_type=r.resource_type,
        resource_id=r.resource_id,
        scope=r.scope,
        status=r.status,
        ip=ip if isinstance(ip, str) else None,
        request_id=rid if isinstance(rid, str) else None,
        metadata=meta,
        created_at=r.created_at,
    )


async def list_audit(
    engine: AsyncEngine,
    ctx: AuthContext,
    f: AuditFilter,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> AuditPage:
    """One page of the records the caller may see, newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")
    where = _conditions(_team_scope(ctx, f.team_id), f)
    c = audit_logs.c
    if cursor:
        at, rid = decode_cursor(cursor)
        where.append(
            sa.tuple_(c.created_at, c.id)
            < sa.tuple_(sa.literal(at, c.created_at.type), sa.literal(rid, c.id.type))
        )
    stmt = sa.select(audit_logs).where(*where).order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
    async with autocommit(engine) as conn:
        rows = (await conn.execute(stmt)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return AuditPage(items=[_record(r) for r in rows], next_cursor=nxt)
