"""Teams, memberships and the owner-protection invariants (docs/spec.md §2.4, §7.1-7.5).

Every rule reads the database: the caller's role in the team is looked up on each call, never
taken from a token. Mutations lock the team row (``FOR UPDATE``) so that two concurrent
changes to one team (say, a delete and a member add) are serialised.

Team soft delete (docs/spec.md §7.3), which reaches outside the database, is in
``team_deletion.py``.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
from pydantic import BaseModel, StrictBool
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import Conn, autocommit, driver, fetchrow, transaction
from warren.cp.db.queries import teams as q
from warren.cp.db.tables import teams, users, users_teams
from warren.cp.services import Timestamp, api_keys, audit, envd_rotation, stream_revocation
from warren.cp.services.api_keys import KeyRef
from warren.cp.services.context import AuthContext
from warren.cp.services.strict import StrictBody
from warren.errors import Forbidden, InvalidRequest, NotFound, TooManyRequests

log = logging.getLogger("warren.teams")

ROLES = ("owner", "admin", "member")
_NAME_RE = re.compile(r"[A-Za-z0-9 _\-@']{1,128}")


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


class MemberRemoval(BaseModel):
    """What a member's removal did to the API keys they created: ``revoked_keys`` with
    ``?revoke_keys=true`` (gone with them), else ``live_keys`` (still working: the team's)."""

    user_id: str
    revoked_keys: list[KeyRef]
    live_keys: list[KeyRef]


class TeamDetail(BaseModel):
    team: Team
    members: list[Member]


# Request bodies, for the REST API and the dashboard alike. Fields whose absence has a
# SPEC-defined message ("team_id is required", "email is required") are optional here so the
# service can say it.


class TeamNameRequest(StrictBody):
    name: str


class AddMemberRequest(StrictBody):
    """An invitation (services/team_invitations.py): the invitee's email and the role they join
    with (``member`` when absent)."""

    email: str | None = None
    role: str | None = None


class RoleRequest(StrictBody):
    role: str | None = None


class ByocRequest(StrictBody):
    enabled: StrictBool


class SwitchTeamRequest(StrictBody):
    team_id: str | None = None


# ---------------------------------------------------------------------------------------------
# Validation and helpers


def validate_team_name(raw: str) -> str:
    name = raw.strip()
    if not _NAME_RE.fullmatch(name):
        raise InvalidRequest("invalid team name: 1-128 characters of letters, digits, spaces, and _ - @ '")
    return name


def new_slug() -> str:
    """6 random bytes: 3 as hex, a hyphen, 3 as hex (docs/spec.md §7.5)."""
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


def user_of(ctx: AuthContext) -> uuid.UUID:
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


async def email_registered(engine: AsyncEngine, email: str) -> bool:
    """Whether an account has this email: the sign-ups' cheap early answer (the unique index on
    ``users.email`` is the real guard, at the insert)."""
    async with autocommit(engine) as conn:
        return (await conn.execute(select(users.c.id).where(users.c.email == email))).first() is not None


async def insert_account(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID,
    email: str,
    name: str,
    password_hash: str | None,
    now: Any,
) -> TeamWithRole:
    """A new user and the default team every account starts with, "<name>'s Team", which it
    owns (caller's transaction; IntegrityError when the email is taken after all)."""
    await conn.execute(
        users.insert().values(
            id=user_id, email=email, password_hash=password_hash, name=name, created_at=now, updated_at=now
        )
    )
    return await insert_team(conn, name=f"{name}'s Team", owner_id=user_id, is_default=True)


async def login_team(conn: AsyncConnection, user_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
    """docs/spec.md §7.6: the live default team, else the earliest-joined live team, else None."""
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


# The team/role check and the member list (``queries.teams``) run on the raw driver connection
# in the hot team reads, and through SQLAlchemy (``fetchrow``) inside the mutations' transactions.
async def _team_and_role(
    conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool
) -> tuple[Mapping[Any, Any], str]:
    """The live team's row and the caller's role, in one query: 404 when the team is missing or
    deleted, 403 when the caller is not a member. With ``lock`` (an SQLAlchemy connection in a
    transaction) the team row is locked (``FOR UPDATE``) for the rest of the transaction,
    serialising changes to one team."""
    if lock and not isinstance(conn, AsyncConnection):
        raise ValueError("locking the team row needs a transaction")
    sql = q.TEAM_AND_ROLE + " FOR UPDATE OF t" if lock else q.TEAM_AND_ROLE
    row = await fetchrow(conn, sql, team_id, user_id)
    if row is None or row["deleted_at"] is not None:
        raise NotFound("team not found")
    if row["role"] is None:
        raise Forbidden("not a member of this team")
    return row, str(row["role"])


async def lock_team_and_role(conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool) -> str:
    return (await _team_and_role(conn, team_id, user_id, lock=lock))[1]


def require_manager(role: str) -> None:
    if role not in ("owner", "admin"):
        raise Forbidden("admin or owner role required")


async def _members(conn: asyncpg.Connection, team_id: uuid.UUID) -> list[Member]:
    return [_member_view(r) for r in await conn.fetch(q.MEMBERS, team_id)]


# ---------------------------------------------------------------------------------------------
# Queries


async def list_teams(engine: AsyncEngine, ctx: AuthContext) -> list[TeamWithRole]:
    """The caller's live teams, in join order."""
    user_id = user_of(ctx)
    async with autocommit(engine) as conn:
        rows = await conn.execute(
            select(teams, users_teams.c.role)
            .join(users_teams, users_teams.c.team_id == teams.c.id)
            .where(users_teams.c.user_id == user_id, teams.c.deleted_at.is_(None))
            .order_by(users_teams.c.created_at, teams.c.id)
        )
        return [_team_view(r, r["role"]) for r in rows.mappings()]  # type: ignore[misc]


async def get_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> TeamDetail:
    user_id = user_of(ctx)
    async with driver(engine) as conn:
        row, _ = await _team_and_role(conn, team_id, user_id, lock=False)
        return TeamDetail(team=_team_view(row), members=await _members(conn, team_id))


async def list_members(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> list[Member]:
    user_id = user_of(ctx)
    async with driver(engine) as conn:
        await lock_team_and_role(conn, team_id, user_id, lock=False)
        return await _members(conn, team_id)


# ---------------------------------------------------------------------------------------------
# Mutations


async def _require_room_for_a_team(conn: AsyncConnection, user_id: uuid.UUID, limit: int) -> None:
    """429 ``quota_exceeded`` when the user already owns ``limit`` live teams (their signup team
    included; a deleted team no longer counts). Every quota is per team and a new team brings the
    whole default quota, so without this one account held as much of the platform as it liked.

    The user's row is locked first (``FOR NO KEY UPDATE``, for the rest of the caller's
    transaction): two creates by one user at the bound cannot both pass the count. The lock
    waits only on this user's other creates, never on rows that merely reference the user
    (memberships, audit rows take ``KEY SHARE``, which it does not conflict with)."""
    await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update(key_share=True))
    owned = (
        await conn.execute(
            select(func.count())
            .select_from(users_teams.join(teams, teams.c.id == users_teams.c.team_id))
            .where(
                users_teams.c.user_id == user_id, users_teams.c.role == "owner", teams.c.deleted_at.is_(None)
            )
        )
    ).scalar_one()
    if owned >= limit:
        raise TooManyRequests(
            f"you own {owned} teams, at most {limit} per user; delete one to create another",
            code="quota_exceeded",
        )


async def create_team(engine: AsyncEngine, settings: Settings, ctx: AuthContext, name: str) -> TeamWithRole:
    """A new team owned by the caller (not their default team), within the teams one user may
    own (``Settings.max_teams_per_user``; platform admins included)."""
    user_id = user_of(ctx)
    clean = validate_team_name(name)
    async with transaction(engine) as conn:
        await _require_room_for_a_team(conn, user_id, settings.max_teams_per_user)
        team = await insert_team(conn, name=clean, owner_id=user_id, is_default=False)
        await audit.record(
            conn, ctx, team_id=ids.parse_id(ids.Kind.TEAM, team.id), action="create", resource_type="team",
            resource_id=team.id, metadata={"name": clean},
        )  # fmt: skip
        return team


async def rename_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, name: str) -> None:
    user_id = user_of(ctx)
    clean = validate_team_name(name)
    async with transaction(engine) as conn:
        require_manager(await lock_team_and_role(conn, team_id, user_id, lock=True))
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


async def _audit_member(
    engine: AsyncEngine | AsyncConnection,
    ctx: AuthContext,
    team_id: uuid.UUID,
    action: str,
    member_id: str,
    metadata: dict[str, Any],
) -> None:
    """One admin-scope audit row for a change to a team's membership."""
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action=action,
        resource_type="member",
        scope="admin",
        resource_id=member_id,
        metadata=metadata,
    )


async def _drop_member(conn: AsyncConnection, team_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute(
        delete(users_teams).where(users_teams.c.team_id == team_id, users_teams.c.user_id == user_id)
    )
    # Whoever leaves keeps no envd token (or signed URL) copied from the team's sandboxes.
    await envd_rotation.revoke_team_tokens(conn, team_id)


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
    """admin ⇄ member. The new role is validated before the caller's role (docs/spec.md §2.4); the
    owner's role never changes and nobody becomes owner."""
    user_id = user_of(ctx)
    if role not in ("admin", "member"):
        raise InvalidRequest("role must be 'admin' or 'member'")
    async with transaction(engine) as conn:
        require_manager(await lock_team_and_role(conn, team_id, user_id, lock=True))
        old = await _target_role(conn, team_id, target)
        if old == "owner":
            raise Forbidden("the team owner's role cannot be changed")
        await conn.execute(
            update(users_teams)
            .where(users_teams.c.team_id == team_id, users_teams.c.user_id == target)
            .values(role=role)
        )
    await _audit_member(
        engine, ctx, team_id, "role_update", ids.user_id(target), {"old_role": old, "new_role": role}
    )


async def remove_member(
    engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, target: uuid.UUID, *, revoke_keys: bool = False
) -> MemberRemoval:
    """Owner/admin removes a non-owner (an admin may remove other admins, or themselves). The
    API keys the member created stay the team's unless ``revoke_keys``: then they go in the same
    transaction, with the audit rows of a key revocation."""
    user_id = user_of(ctx)
    async with transaction(engine) as conn:
        require_manager(await lock_team_and_role(conn, team_id, user_id, lock=True))
        old = await _target_role(conn, team_id, target)
        if old == "owner":
            raise Forbidden("the team owner cannot be removed")
        keys = await api_keys.keys_created_by(conn, ctx, team_id, target, revoke=revoke_keys)
        # One token bump for both the member and their keys (what either could have read).
        await _drop_member(conn, team_id, target)
        meta: dict[str, Any] = {"role": old}
        if revoke_keys:
            meta["revoked_keys"] = [k.id for k in keys]
        await _audit_member(conn, ctx, team_id, "remove", ids.user_id(target), meta)
    stream_revocation.kick()  # their open streams, and their keys', end (committed now)
    return MemberRemoval(
        user_id=ids.user_id(target),
        revoked_keys=keys if revoke_keys else [],
        live_keys=[] if revoke_keys else keys,
    )


async def leave_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> None:
    user_id = user_of(ctx)
    async with transaction(engine) as conn:
        role = await lock_team_and_role(conn, team_id, user_id, lock=True)
        if role == "owner":
            raise Forbidden("the owner cannot leave the team; delete the team instead")
        await _drop_member(conn, team_id, user_id)
    stream_revocation.kick()  # their open streams end (committed now)
    await _audit_member(engine, ctx, team_id, "leave", ids.user_id(user_id), {"role": role})


async def set_byoc(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, enabled: bool) -> None:
    """Platform admins only. One-way: enabling is idempotent, disabling is refused (docs/spec.md §2.10)."""
    if not ctx.is_admin:
        raise Forbidden("admin access required")
    if not enabled:
        raise InvalidRequest("BYOC cannot be disabled once enabled")
    async with transaction(engine) as conn:
        res = await conn.execute(
            update(teams)
            .where(teams.c.id == team_id, teams.c.deleted_at.is_(None))
            .values(is_byoc=True)
            .returning(teams.c.id)
        )
        if res.first() is None:
            raise NotFound("team not found")
        await audit.record(
            conn, ctx, team_id=team_id, action="enable_byoc", resource_type="team",
            resource_id=ids.team_id(team_id), scope="admin",
        )  # fmt: skip
