"""Who is acting. Built by :func:`warren.cp.services.authn.authenticate` (for the REST API, the
exec WebSocket and the dashboard alike) after re-checking everything against the database, and
passed to every service function."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from warren.errors import Forbidden


@dataclass(frozen=True)
class AuthContext:
    kind: Literal["jwt", "api_key", "session", "sandbox_token"]
    # The live team this request acts for (membership and deleted_at verified in the DB), or
    # None when a user has no team at all (e.g. after deleting their last one).
    team_id: uuid.UUID | None
    user_id: uuid.UUID | None = None
    email: str = ""
    name: str = ""
    # The caller's role in team_id, read from the DB on this request; None for API keys.
    role: str | None = None
    # users.is_admin read from the DB on this request.
    is_admin: bool = False
    api_key_id: uuid.UUID | None = None
    api_key_name: str = ""
    # A sandbox's own access token (E2B's envd plane, docs/e2b.md §1.2) reaches that one
    # sandbox of team_id and nothing else: `sandboxes.find` refuses any other id.
    only_sandbox: str | None = None
    # The account that owns team_id (its one ``owner`` member, fixed for the team's life), read
    # with the credentials: per-owner bounds (services/stream_slots.py) count by it.
    owner_id: uuid.UUID | None = None
    # A sandbox access token's epoch (envd_access): open streams end when it moves on
    # (services/stream_revocation.py).
    token_epoch: int | None = None

    @property
    def is_manager(self) -> bool:
        return self.role in ("owner", "admin")


def no_team() -> Forbidden:
    """403 ``no_team``: the caller has no team to act for, or it was deleted meanwhile."""
    return Forbidden("no active team context; re-authenticate", code="no_team")


def require_team(ctx: AuthContext) -> uuid.UUID:
    """The acting team, or 403 ``no_team`` for a caller without one (docs/spec.md §2.5 step 2)."""
    if ctx.team_id is None:
        raise no_team()
    return ctx.team_id
