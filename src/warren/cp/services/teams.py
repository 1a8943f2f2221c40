"""Teams, memberships and the owner-protection invariants (SPEC §2.4, §7.1-7.5).

Every rule reads the database: the caller's role in the team is looked up on each call, never
taken from a token. Mutations lock the team row (``FOR UPDATE``) so that two concurrent
changes to one team (say, a delete and a member add) are serialised.

Team soft delete (§7.3) reaches outside the database: destroying the team's sandboxes on their
hosts and deleting its template files are :data:`team_deletion_hooks`, which the hosts
subsystem fills in. Without them the delete still marks sandbox rows ``stopped`` and removes
template rows.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import Conn, driver, fetchrow
from warren.cp.db.tables import sandboxes, teams, templates, users, users_teams
from warren.cp.services import Timestamp, audit, autocommit
from warren.cp.services.context import AuthContext
from warren.errors import Forbidden, InvalidRequest, NotFound

log = logging.getLogger("warren.teams")

ROLES = ("owner", "admin", "member")
_NAME_RE = re.compile(r"[A-Za-z0-9 _\-@']{1,128}")
# Statuses a team delete stops (SPEC §1.11, §7.3 names running, paused and starting; a create
# still in flight and a sandbox on an unreachable host exist on their host just as well).
_STOP_ON_DELETE = ("running", "paused", "starting", "pending", "missing")


class Team(BaseModel):
    id: str
    name: str
    slug: str
    is_byoc: bool
    created_at: Timestamp


class TeamWithRole(Team):
    role: str


class Member(BaseModel):
    user_id: str
    name: str
    email: str
    role: str
    joined_at: Timestamp


class TeamDetail(BaseModel):
    team: Team
    members: list[Member]


@dataclass(frozen=True)
class SandboxRef:
    id: uuid.UUID
    host_id: uuid.UUID
    status: str


@dataclass(frozen=True)
class TemplateRef:
    id: uuid.UUID
    name: str
    type: str
    host_id: uuid.UUID | None = None  # a snapshot's host: where its files are


@dataclass
class TeamDeletionHooks:
    """What a team delete does outside the database; set by the hosts subsystem at startup.

    ``destroy_sandboxes(engine, team_id, sandboxes)`` runs BEFORE the rows are marked stopped
    (SPEC §7.3 step 2: NotFound ignored, other errors logged, the delete continues — the hook
    should not raise; if it does, the error is logged and the delete goes on), and again after
    the delete for sandboxes whose create finished in between.
    ``delete_template_files(engine, team_id, templates)`` runs AFTER the team's template rows
    were deleted in the delete's transaction (§7.3 step 4), with the rows that were removed.
    """

    destroy_sandboxes: Callable[[AsyncEngine, uuid.UUID, list[SandboxRef]], Awaitable[None]] | None = None
    delete_template_files: Callable[[AsyncEngine, uuid.UUID, list[TemplateRef]], Awaitable[None]] | None = (
        None
    )
    extra: dict[str, object] = field(default_factory=dict)


team_deletion_hooks = TeamDeletionHooks()


# ---------------------------------------------------------------------------------------------
# Validation and helpers


def validate_team_name(raw: str) -> str:
    name = raw.strip()
    if not _NAME_RE.fullmatch(name):
        raise InvalidRequest("invalid team name: 1-128 characters of letters, digits, spaces, and _ - @ '")
    return name


def new_slug() -> str:
    """6 random bytes: 3 as hex, a hyphen, 3 as hex (SPEC §7.5)."""
    b = secrets.token_bytes(6)
    return f"{b[:3].hex()}-{b[3:].hex()}"


def parse_team_id(text: str) -> uuid.UUID:
    return ids.parse_id(ids.Kind.TEAM, text, what="team ID")


def _team_view(row: Mapping[Any, Any], role: str | None = None) -> Team | TeamWithRole:
    data = {
        "id": ids.team_id(row["id"]),
        "name": row["name"],
        "slug": row["slug"],
        "is_byoc": row["is_byoc"],
        "created_at": row["created_at"],
    }
    if role is None:
        return Team(**data)
    return TeamWithRole(**data, role=role)


def _member_view(row: Mapping[Any, Any]) -> Member:
    return Member(
        user_id=ids.user_id(row["user_id"]),
        name=row["name"],
        email=row["email"],
        role=row["role"],
        joined_at=row["joined_at"],
    )


def _user_of(ctx: AuthContext) -> uuid.UUID:
    if ctx.user_id is None:
        raise Forbidden("this action needs a user, not an API key")
    return ctx.user_id


async def insert_team(
    conn: AsyncConnection, *, name: str, owner_id: uuid.UUID, is_default: bool
) -> TeamWithRole:
    """Insert a team with a fresh unique slug and its owner membership (caller's transaction)."""
    now = clock.now()
    team_uuid = ids.new_uuid()
    # The slug space is 2^48, so a collision is astronomically rare; ON CONFLICT DO NOTHING lets
    # us retry without a savepoint when it happens.
    for _ in range(10):
        slug = new_slug()
        res = await conn.execute(
            pg_insert(teams)
            .values(id=team_uuid, name=name, slug=slug, is_byoc=False, created_at=now)
            .on_conflict_do_nothing(index_elements=["slug"])
            .returning(teams.c.id)
        )
        if res.first() is not None:
            break
    else:  # pragma: no cover - needs ten 48-bit collisions in a row
        raise RuntimeError("could not allocate a unique team slug")
    await conn.execute(
        users_teams.insert().values(
            user_id=owner_id, team_id=team_uuid, is_default=is_default, role="owner", created_at=now
        )
    )
    return TeamWithRole(
        id=ids.team_id(team_uuid), name=name, slug=slug, is_byoc=False, created_at=now, role="owner"
    )


async def login_team(conn: AsyncConnection, user_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
    """SPEC §7.6: the live default team, else the earliest-joined live team, else None."""
    row = (
        await conn.execute(
            select(users_teams.c.team_id, users_teams.c.role)
            .join(teams, teams.c.id == users_teams.c.team_id)
            .where(users_teams.c.user_id == user_id, teams.c.deleted_at.is_(None))
            .order_by(users_teams.c.is_default.desc(), users_teams.c.created_at, users_teams.c.team_id)
            .limit(1)
        )
    ).first()
    return (row.team_id, row.role) if row else None


# The team/role check and the member list are the statements of the hot team reads: plain SQL
# run on the raw driver connection there (``warren.cp.db.engine.driver``), and the same text run
# through SQLAlchemy inside the transactions of the mutations.
_TEAM_AND_ROLE = """
    SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, t.deleted_at, ut.role
    FROM teams t
    LEFT JOIN users_teams ut ON ut.team_id = t.id AND ut.user_id = $2
    WHERE t.id = $1
"""
_MEMBERS = """
    SELECT ut.user_id, u.name, u.email, ut.role, ut.created_at AS joined_at
    FROM users_teams ut JOIN users u ON u.id = ut.user_id
    WHERE ut.team_id = $1
    ORDER BY ut.created_at, ut.user_id
"""


async def _team_and_role(
    conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool
) -> tuple[Mapping[Any, Any], str]:
    """The live team's row and the caller's role, in one query: 404 when the team is missing or
    deleted, 403 when the caller is not a member. With ``lock`` (an SQLAlchemy connection in a
    transaction) the team row is locked (``FOR UPDATE``) for the rest of the transaction,
    serialising changes to one team."""
    if lock and not isinstance(conn, AsyncConnection):
        raise ValueError("locking the team row needs a transaction")
    sql = _TEAM_AND_ROLE + " FOR UPDATE OF t" if lock else _TEAM_AND_ROLE
    row = await fetchrow(conn, sql, team_id, user_id)
    if row is None or row["deleted_at"] is not None:
        raise NotFound("team not found")
    if row["role"] is None:
        raise Forbidden("not a member of this team")
    return row, str(row["role"])


async def _lock_team_and_role(
    conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool
) -> str:
    return (await _team_and_role(conn, team_id, user_id, lock=lock))[1]


def _require_manager(role: str) -> None:
    if role not in ("owner", "admin"):
        raise Forbidden("admin or owner role required")


async def _members(conn: asyncpg.Connection, team_id: uuid.UUID) -> list[Member]:
    return [_member_view(r) for r in await conn.fetch(_MEMBERS, team_id)]


# ---------------------------------------------------------------------------------------------
# Queries


async def list_teams(engine: AsyncEngine, ctx: AuthContext) -> list[TeamWithRole]:
    """The caller's live teams, in join order."""
    user_id = _user_of(ctx)
    async with autocommit(engine).connect() as conn:
        rows = await conn.execute(
            select(teams, users_teams.c.role)
            .join(users_teams, users_teams.c.team_id == teams.c.id)
            .where(users_teams.c.user_id == user_id, teams.c.deleted_at.is_(None))
            .order_by(users_teams.c.created_at, teams.c.id)
        )
        return [_team_view(r, r["role"]) for r in rows.mappings()]  # type: ignore[misc]


async def get_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> TeamDetail:
    user_id = _user_of(ctx)
    async with driver(engine) as conn:
        row, _ = await _team_and_role(conn, team_id, user_id, lock=False)
        return TeamDetail(team=_team_view(row), members=await _members(conn, team_id))


async def list_members(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> list[Member]:
    user_id = _user_of(ctx)
    async with driver(engine) as conn:
        await _lock_team_and_role(conn, team_id, user_id, lock=False)
        return await _members(conn, team_id)


# ---------------------------------------------------------------------------------------------
# Mutations


async def create_team(engine: AsyncEngine, ctx: AuthContext, name: str) -> TeamWithRole:
    """A new team owned by the caller (not their default team)."""
    user_id = _user_of(ctx)
    clean = validate_team_name(name)
    async with engine.begin() as conn:
        return await insert_team(conn, name=clean, owner_id=user_id, is_default=False)


async def rename_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, name: str) -> None:
    user_id = _user_of(ctx)
    clean = validate_team_name(name)
    async with engine.begin() as conn:
        _require_manager(await _lock_team_and_role(conn, team_id, user_id, lock=True))
        old = (await conn.execute(select(teams.c.name).where(teams.c.id == team_id))).scalar()
        await conn.execute(update(teams).where(teams.c.id == team_id).values(name=clean))
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action="rename",
        resource_type="team",
        resource_id=ids.team_id(team_id),
        metadata={"old_name": old, "new_name": clean},
    )


async def delete_team(
    engine: AsyncEngine,
    ctx: AuthContext,
    team_id: uuid.UUID,
    *,
    hooks: TeamDeletionHooks | None = None,
) -> None:
    """Soft delete (owner only), SPEC §7.3. Sandbox rows, API keys, memberships and audit rows
    stay; the slug stays reserved; API keys and JWTs of the team stop working at once."""
    hooks = hooks or team_deletion_hooks
    user_id = _user_of(ctx)
    async with engine.connect() as conn:
        role = await _lock_team_and_role(conn, team_id, user_id, lock=False)
        if role != "owner":
            raise Forbidden("only the team owner can delete the team")
        live = [
            SandboxRef(id=r.id, host_id=r.host_id, status=r.status)
            for r in await conn.execute(
                select(sandboxes.c.id, sandboxes.c.host_id, sandboxes.c.status).where(
                    sandboxes.c.team_id == team_id, sandboxes.c.status.in_(_STOP_ON_DELETE)
                )
            )
        ]

    async def best_effort(what: str, hook: Callable[..., Awaitable[None]] | None, refs: list[Any]) -> None:
        # SPEC §7.3: host-side clean-up failures are logged; the delete goes on.
        if refs and hook is not None:
            try:
                await hook(engine, team_id, refs)
            except Exception:
                log.exception("team %s delete: %s failed", ids.team_id(team_id), what)

    await best_effort("destroying sandboxes on hosts", hooks.destroy_sandboxes, live)

    now = clock.now()
    # One transaction: if stopping the rows fails, the team is not deleted (§7.3 step 3).
    async with engine.begin() as conn:
        role = await _lock_team_and_role(conn, team_id, user_id, lock=True)
        if role != "owner":
            raise Forbidden("only the team owner can delete the team")
        # The team row is locked: no create can insert a sandbox for it until this commits, and
        # none can after (creates insert only for a live team).
        stopped = [
            SandboxRef(id=r.id, host_id=r.host_id, status=r.status)
            for r in await conn.execute(
                update(sandboxes)
                .where(sandboxes.c.team_id == team_id, sandboxes.c.status.in_(_STOP_ON_DELETE))
                .values(status="stopped", last_updated=now)
                .returning(sandboxes.c.id, sandboxes.c.host_id, sandboxes.c.status)
            )
        ]
        removed = [
            TemplateRef(id=r.id, name=r.name, type=r.type, host_id=r.host_id)
            for r in await conn.execute(
                delete(templates)
                .where(templates.c.team_id == team_id)
                .returning(templates.c.id, templates.c.name, templates.c.type, templates.c.host_id)
            )
        ]
        await conn.execute(update(teams).where(teams.c.id == team_id).values(deleted_at=now))

    # Sandboxes whose create finished between the first list and the stop above were not
    # destroyed yet: those inserted since, and those listed while still `pending` (the agent
    # refused to destroy them mid-create). A create still in flight now finds its row stopped
    # and destroys its sandbox itself.
    destroyed = {ref.id for ref in live if ref.status != "pending"}
    late = [ref for ref in stopped if ref.id not in destroyed]
    await best_effort("destroying sandboxes on hosts", hooks.destroy_sandboxes, late)
    await best_effort("deleting template files", hooks.delete_template_files, removed)


async def add_member(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, email: str) -> Member:
    user_id = _user_of(ctx)
    clean = email.strip().lower()
    if not clean:
        raise InvalidRequest("email is required")
    async with engine.begin() as conn:
        _require_manager(await _lock_team_and_role(conn, team_id, user_id, lock=True))
        target = (
            await conn.execute(select(users.c.id, users.c.name, users.c.email).where(users.c.email == clean))
        ).first()
        if target is None:
            raise NotFound("user not found: no account with that email")
        now = clock.now()
        res = await conn.execute(
            pg_insert(users_teams)
            .values(user_id=target.id, team_id=team_id, is_default=False, role="member", created_at=now)
            .on_conflict_do_nothing()
            .returning(users_teams.c.created_at)
        )
        joined = res.scalar()
        if joined is None:
            raise InvalidRequest("user is already a member")
    member = Member(
        user_id=ids.user_id(target.id), name=target.name, email=target.email, role="member", joined_at=joined
    )
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action="add",
        resource_type="member",
        scope="admin",
        resource_id=member.user_id,
        metadata={"email": target.email, "role": "member"},
    )
    return member


def parse_user_id(text: str) -> uuid.UUID:
    return ids.parse_id(ids.Kind.USER, text, what="user ID")


async def _target_role(conn: AsyncConnection, team_id: uuid.UUID, target: uuid.UUID) -> str:
    role = (
        await conn.execute(
            select(users_teams.c.role)
            .where(users_teams.c.team_id == team_id, users_teams.c.user_id == target)
            .with_for_update()
        )
    ).scalar()
    if role is None:
        raise NotFound("user is not a member of this team")
    return str(role)


async def set_member_role(
    engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, target: uuid.UUID, role: str
) -> None:
    """admin ⇄ member. The new role is validated before the caller's role (SPEC §2.4); the
    owner's role never changes and nobody becomes owner."""
    user_id = _user_of(ctx)
    if role not in ("admin", "member"):
        raise InvalidRequest("role must be 'admin' or 'member'")
    async with engine.begin() as conn:
        _require_manager(await _lock_team_and_role(conn, team_id, user_id, lock=True))
        old = await _target_role(conn, team_id, target)
        if old == "owner":
            raise Forbidden("the team owner's role cannot be changed")
        await conn.execute(
            update(users_teams)
            .where(users_teams.c.team_id == team_id, users_teams.c.user_id == target)
            .values(role=role)
        )
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action="role_update",
        resource_type="member",
        scope="admin",
        resource_id=ids.user_id(target),
        metadata={"old_role": old, "new_role": role},
    )


async def remove_member(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, target: uuid.UUID) -> None:
    """Owner/admin removes a non-owner (an admin may remove other admins, or themselves)."""
    user_id = _user_of(ctx)
    async with engine.begin() as conn:
        _require_manager(await _lock_team_and_role(conn, team_id, user_id, lock=True))
        old = await _target_role(conn, team_id, target)
        if old == "owner":
            raise Forbidden("the team owner cannot be removed")
        await conn.execute(
            delete(users_teams).where(users_teams.c.team_id == team_id, users_teams.c.user_id == target)
        )
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action="remove",
        resource_type="member",
        scope="admin",
        resource_id=ids.user_id(target),
        metadata={"role": old},
    )


async def leave_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> None:
    user_id = _user_of(ctx)
    async with engine.begin() as conn:
        role = await _lock_team_and_role(conn, team_id, user_id, lock=True)
        if role == "owner":
            raise Forbidden("the owner cannot leave the team; delete the team instead")
        await conn.execute(
            delete(users_teams).where(users_teams.c.team_id == team_id, users_teams.c.user_id == user_id)
        )
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action="leave",
        resource_type="member",
        scope="admin",
        resource_id=ids.user_id(user_id),
        metadata={"role": role},
    )


async def set_byoc(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, enabled: bool) -> None:
    """Platform admins only. One-way: enabling is idempotent, disabling is refused (SPEC §2.10)."""
    if not ctx.is_admin:
        raise Forbidden("admin access required")
    if not enabled:
        raise InvalidRequest("BYOC cannot be disabled once enabled")
    async with engine.begin() as conn:
        res = await conn.execute(
            update(teams)
            .where(teams.c.id == team_id, teams.c.deleted_at.is_(None))
            .values(is_byoc=True)
            .returning(teams.c.id)
        )
        if res.first() is None:
            raise NotFound("team not found")
