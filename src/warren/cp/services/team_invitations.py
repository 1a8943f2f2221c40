"""Team invitations (docs/auth.md "Invitations"): a registered user joins a team only by
accepting one.

Until session 13 an owner or admin adding an email made that user a member at once: anyone
could put a victim into a team the attacker controls (to be shown in the victim's dashboard, to
run things the attacker reads) without asking. Now the add records a pending invitation for
that user; the invitee lists theirs and accepts or declines, the team's owner and admins list
and revoke the team's.

Rules, each checked here once:
- one pending invitation per (team, invitee): a second invite replaces it (a new id, a new
  expiry); at most ``MAX_PENDING_PER_TEAM`` unexpired ones per team (429
  ``too_many_invitations``), expired ones deleted by the team's next invite;
- an invitation lives ``INVITATION_TTL``; an expired, unknown, revoked or another user's
  invitation is the same 404 to the invitee;
- accepting re-checks that the team is live, that whoever invited is still its owner or an
  admin (a manager removed or demoted meanwhile cannot bring someone in after the fact), and
  that the invitee belongs to fewer than ``MAX_TEAMS_JOINED`` live teams;
- roles: ``member`` or ``admin``, never ``owner``.
Every mutation locks the team row first (as ``teams.py``'s do), so it is serialised with the
team's other membership changes and its deletion.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import team_invitations, teams, users, users_teams
from warren.cp.services import Timestamp, audit, emails
from warren.cp.services import users as users_svc
from warren.cp.services.audit_log import decode_cursor, encode_cursor
from warren.cp.services.context import AuthContext
from warren.cp.services.teams import TeamWithRole, lock_team_and_role, require_manager, user_of
from warren.errors import Conflict, InvalidRequest, NotFound, TooManyRequests

INVITATION_TTL = timedelta(days=7)
# Pending invitations one team holds at once: each is a row and a line in someone's list.
MAX_PENDING_PER_TEAM = 100
# Live teams one user may belong to (owned ones included): what accepting may not pass.
MAX_TEAMS_JOINED = 100
# The invitee's list, a page at a time: at most this many a page (a list flooded by many teams
# stays bounded per request; the cursor reaches the rest).
MAX_LISTED = 100
INVITABLE_ROLES = ("admin", "member")

_inviter = users.alias("inviter")
_invitee = users.alias("invitee")


class Invitation(BaseModel):
    id: str
    team_id: str
    team_name: str
    role: str
    email: str  # the invitee's
    invited_by: str  # the inviter's email
    created_at: Timestamp
    expires_at: Timestamp


def parse_invitation_id(text: str) -> uuid.UUID:
    """A malformed id is a 404 like an unknown one: nothing to learn from the difference."""
    try:
        return ids.parse_id(ids.Kind.INVITATION, text, what="invitation ID")
    except InvalidRequest:
        raise NotFound("invitation not found") from None


def _view(row: Mapping[Any, Any]) -> Invitation:
    return Invitation(
        id=ids.format_id(ids.Kind.INVITATION, row["id"]),
        team_id=ids.team_id(row["team_id"]),
        team_name=row["team_name"],
        role=row["role"],
        email=row["email"],
        invited_by=row["inviter_email"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


def _select_views() -> Any:
    t = team_invitations
    return (
        select(
            t.c.id, t.c.team_id, teams.c.name.label("team_name"), t.c.role, _invitee.c.email,
            _inviter.c.email.label("inviter_email"), t.c.created_at, t.c.expires_at,
        )
        .join(teams, teams.c.id == t.c.team_id)
        .join(_invitee, _invitee.c.id == t.c.user_id)
        .join(_inviter, _inviter.c.id == t.c.invited_by)
        .where(t.c.expires_at > clock.now(), teams.c.deleted_at.is_(None))
    )  # fmt: skip


async def _audit(ctx: AuthContext, conn: AsyncConnection | AsyncEngine, team_id: uuid.UUID, action: str,
                 invitation_id: uuid.UUID, metadata: dict[str, Any]) -> None:  # fmt: skip
    """One admin-scope record in the team's log, as membership changes get (``teams.py``)."""
    await audit.record(
        conn, ctx, team_id=team_id, action=action, resource_type="invitation", scope="admin",
        resource_id=ids.format_id(ids.Kind.INVITATION, invitation_id), metadata=metadata,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The team's side: invite, list, revoke (owner or admin)


async def invite(
    engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, email: str, role: str | None
) -> Invitation:
    """Invite a registered user by email. An unknown email is the 404 the direct add always
    answered (no more said about accounts than before); a member already is 409."""
    user_id = user_of(ctx)
    if not email.strip():
        raise InvalidRequest("email is required")
    # The signup rule: a look-alike or invisible-character address is refused, never looked up.
    clean = emails.normalize_email(email)
    role = role or "member"
    if role not in INVITABLE_ROLES:
        raise InvalidRequest("role must be 'admin' or 'member'")
    async with transaction(engine) as conn:
        require_manager(await lock_team_and_role(conn, team_id, user_id, lock=True))
        target = (await conn.execute(select(users.c.id).where(users.c.email == clean))).scalar()
        if target is None:
            raise NotFound("user not found: no account with that email")
        joined = select(users_teams.c.user_id).where(
            users_teams.c.team_id == team_id, users_teams.c.user_id == target
        )
        if (await conn.execute(joined)).first() is not None:
            raise Conflict("user is already a member", code="already_member")
        new_id = await _replace(conn, team_id, target, role, user_id)
        await _audit(ctx, conn, team_id, "invite", new_id, {"email": clean, "role": role})
        row = (await conn.execute(_select_views().where(team_invitations.c.id == new_id))).mappings().one()
        return _view(row)


async def _replace(
    conn: AsyncConnection, team_id: uuid.UUID, target: uuid.UUID, role: str, inviter: uuid.UUID
) -> uuid.UUID:
    """The team's invitation of ``target``, new or replacing theirs, within the pending bound
    (caller holds the team row's lock, so the count cannot be raced by the team's other invites)."""
    t = team_invitations
    now = clock.now()
    await conn.execute(
        delete(t).where(t.c.team_id == team_id, (t.c.expires_at <= now) | (t.c.user_id == target))
    )
    pending = (
        await conn.execute(select(func.count()).select_from(t).where(t.c.team_id == team_id))
    ).scalar_one()
    if pending >= MAX_PENDING_PER_TEAM:
        raise TooManyRequests(
            f"the team has {pending} pending invitations (at most {MAX_PENDING_PER_TEAM}); "
            "revoke one or wait for one to be answered or expire",
            code="too_many_invitations",
        )
    new_id = ids.new_uuid()
    await conn.execute(
        t.insert().values(
            id=new_id, team_id=team_id, user_id=target, role=role, invited_by=inviter,
            created_at=now, expires_at=now + INVITATION_TTL,
        )
    )  # fmt: skip
    return new_id


async def list_for_team(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID) -> list[Invitation]:
    """The team's unexpired invitations, oldest first (owner or admin)."""
    user_id = user_of(ctx)
    async with autocommit(engine) as conn:
        require_manager(await lock_team_and_role(conn, team_id, user_id, lock=False))
        stmt = _select_views().where(team_invitations.c.team_id == team_id)
        rows = await conn.execute(stmt.order_by(team_invitations.c.created_at, team_invitations.c.id))
        return [_view(r) for r in rows.mappings()]


async def revoke(engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, invitation_id: uuid.UUID) -> None:
    """Withdraw one of the team's invitations (owner or admin); another team's is a 404."""
    user_id = user_of(ctx)
    t = team_invitations
    async with transaction(engine) as conn:
        require_manager(await lock_team_and_role(conn, team_id, user_id, lock=True))
        gone = (
            await conn.execute(
                delete(t)
                .where(t.c.id == invitation_id, t.c.team_id == team_id)
                .returning(t.c.role, t.c.user_id)
            )
        ).first()
        if gone is None:
            raise NotFound("invitation not found")
        await _audit(ctx, conn, team_id, "revoke", invitation_id, {"user_id": ids.user_id(gone.user_id)})


# ---------------------------------------------------------------------------------------------
# The invitee's side: list, accept, decline (the invitee's own user session, any team)


class InvitationPage(BaseModel):
    items: list[Invitation]
    # Pass as ``cursor`` for the next (older) page; None on the last one.
    next_cursor: str | None = None


async def list_mine(
    engine: AsyncEngine, ctx: AuthContext, *, limit: int = MAX_LISTED, cursor: str | None = None
) -> InvitationPage:
    """The caller's unexpired invitations to live teams, newest first, ``limit`` (at most
    ``MAX_LISTED``) a page; ``cursor`` (opaque: the last one's time and id, as the audit log's)
    continues after the page that gave it. Works with a teamless session: it needs only the user."""
    user_id = user_of(ctx)
    if not 1 <= limit <= MAX_LISTED:
        raise InvalidRequest(f"limit must be 1-{MAX_LISTED}")
    t = team_invitations
    stmt = _select_views().where(t.c.user_id == user_id)
    if cursor:
        at, rid = decode_cursor(cursor)
        stmt = stmt.where(tuple_(t.c.created_at, t.c.id) < tuple_(literal(at), literal(rid)))
    stmt = stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with autocommit(engine) as conn:
        rows = list((await conn.execute(stmt)).mappings())
    more, rows = len(rows) > limit, rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return InvitationPage(items=[_view(r) for r in rows], next_cursor=nxt)


async def _team_of_mine(conn: AsyncConnection, user_id: uuid.UUID, invitation_id: uuid.UUID) -> uuid.UUID:
    """The team of the caller's own unexpired invitation, its row locked (before the
    invitation's, the order every team mutation takes); anything else is one 404."""
    t = team_invitations
    team_id = (
        await conn.execute(select(t.c.team_id).where(t.c.id == invitation_id, t.c.user_id == user_id))
    ).scalar()
    if team_id is not None:
        live = select(teams.c.id).where(teams.c.id == team_id, teams.c.deleted_at.is_(None)).with_for_update()
        if (await conn.execute(live)).first() is not None:
            return uuid.UUID(str(team_id))
    raise NotFound("invitation not found")


async def _take(conn: AsyncConnection, user_id: uuid.UUID, invitation_id: uuid.UUID) -> Mapping[Any, Any]:
    """Delete the caller's unexpired invitation and return it (404 when there is none)."""
    t = team_invitations
    row = (
        await conn.execute(
            delete(t)
            .where(t.c.id == invitation_id, t.c.user_id == user_id, t.c.expires_at > clock.now())
            .returning(t.c.team_id, t.c.role, t.c.invited_by)
        )
    ).first()
    if row is None:
        raise NotFound("invitation not found")
    return row._mapping


async def _require_room_to_join(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    """429 ``quota_exceeded`` when the user is in ``MAX_TEAMS_JOINED`` live teams already. The
    user's row is locked (``FOR NO KEY UPDATE``, as ``teams._require_room_for_a_team`` does) so
    two accepts at the bound cannot both pass the count."""
    await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update(key_share=True))
    joined = (
        await conn.execute(
            select(func.count())
            .select_from(users_teams.join(teams, teams.c.id == users_teams.c.team_id))
            .where(users_teams.c.user_id == user_id, teams.c.deleted_at.is_(None))
        )
    ).scalar_one()
    if joined >= MAX_TEAMS_JOINED:
        raise TooManyRequests(
            f"you belong to {joined} teams, at most {MAX_TEAMS_JOINED}; leave one to join another",
            code="quota_exceeded",
        )


async def accept(engine: AsyncEngine, ctx: AuthContext, invitation_id: uuid.UUID) -> TeamWithRole:
    """Join the team with the invitation's role; the team is the caller's to switch to."""
    user_id = user_of(ctx)
    async with transaction(engine) as conn:
        team_id = await _team_of_mine(conn, user_id, invitation_id)
        inv = await _take(conn, user_id, invitation_id)
        # Whoever registered the address first gets its invitations: only its proven holder
        # may join with one (session 14: an address squatter gains nothing). After the 404s;
        # the refusal rolls the take back, the invitation stays for after verifying.
        await users_svc.require_verified(conn, user_id)
        inviter_role = (
            await conn.execute(
                select(users_teams.c.role).where(
                    users_teams.c.team_id == team_id, users_teams.c.user_id == inv["invited_by"]
                )
            )
        ).scalar()
        if inviter_role not in ("owner", "admin") or inv["role"] not in INVITABLE_ROLES:
            # Whoever invited is no longer the team's to speak for: the invitation died with it.
            raise NotFound("invitation not found")
        await _require_room_to_join(conn, user_id)
        if await _is_member(conn, team_id, user_id):
            raise Conflict("you are already a member of this team", code="already_member")
        await conn.execute(
            users_teams.insert().values(
                user_id=user_id, team_id=team_id, is_default=False, role=inv["role"], created_at=clock.now()
            )
        )
        team = (await conn.execute(select(teams).where(teams.c.id == team_id))).mappings().one()
        await _audit(ctx, conn, team_id, "accept", invitation_id, {"role": inv["role"]})
    return TeamWithRole(
        id=ids.team_id(team_id), name=team["name"], slug=team["slug"], is_byoc=team["is_byoc"],
        created_at=team["created_at"], role=inv["role"],
    )  # fmt: skip


async def _is_member(conn: AsyncConnection, team_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    stmt = select(users_teams.c.user_id).where(
        users_teams.c.team_id == team_id, users_teams.c.user_id == user_id
    )
    return (await conn.execute(stmt)).first() is not None


async def decline(engine: AsyncEngine, ctx: AuthContext, invitation_id: uuid.UUID) -> None:
    """Refuse the invitation: it is gone, and the team sees the refusal in its audit log."""
    user_id = user_of(ctx)
    async with transaction(engine) as conn:
        team_id = await _team_of_mine(conn, user_id, invitation_id)
        inv = await _take(conn, user_id, invitation_id)
        await _audit(ctx, conn, team_id, "decline", invitation_id, {"role": inv["role"]})
