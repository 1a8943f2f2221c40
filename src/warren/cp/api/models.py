"""Request and response models of the accounts routes (auth, API keys, users, teams, admin).

Request models forbid unknown fields (→ 400). Fields whose absence has a SPEC-defined message
("team_id is required", "email is required") are optional here so the service can say it.
A resource's models live in its service module (``services/teams.py``: the team views and the
team request bodies, shared with the dashboard) and are re-exported here for the routers.
"""

from __future__ import annotations

from warren.cp.http_errors import ErrorEnvelope
from warren.cp.services.api_keys import ApiKey
from warren.cp.services.auth import AuthResult
from warren.cp.services.strict import INT32_MAX, StrictBody
from warren.cp.services.team_invitations import Invitation
from warren.cp.services.teams import (
    AddMemberRequest,
    ByocRequest,
    Member,
    RoleRequest,
    SwitchTeamRequest,
    Team,
    TeamDetail,
    TeamNameRequest,
    TeamWithRole,
)
from warren.cp.services.users import UserMatch

__all__ = [
    "INT32_MAX",
    "AddMemberRequest",
    "ApiKey",
    "ApiKeyCreateRequest",
    "AuthResult",
    "ByocRequest",
    "ErrorEnvelope",
    "Invitation",
    "LoginRequest",
    "Member",
    "RoleRequest",
    "SignupRequest",
    "StrictRequest",
    "SwitchTeamRequest",
    "Team",
    "TeamDetail",
    "TeamNameRequest",
    "TeamWithRole",
    "UserMatch",
]


class StrictRequest(StrictBody):
    """Base for JSON request bodies: unknown fields, NUL, lone surrogates and integers past
    int64 are a 400 (the shared rule in ``warren.cp.services.strict``); ``INT32_MAX`` bounds
    fields stored in INT columns."""


class SignupRequest(StrictRequest):
    email: str
    password: str
    name: str


class LoginRequest(StrictRequest):
    email: str
    password: str


class ApiKeyCreateRequest(StrictRequest):
    name: str | None = None
