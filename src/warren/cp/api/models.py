"""Request and response models of the accounts routes (auth, API keys, users, teams, admin).

Request models forbid unknown fields (→ 400). Fields whose absence has a SPEC-defined message
("team_id is required", "email is required") are optional here so the service can say it.
Response models are the services' own view models, re-exported for the routers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, field_validator

from warren.cp.http_errors import ErrorEnvelope
from warren.cp.services.api_keys import ApiKey
from warren.cp.services.auth import AuthResult
from warren.cp.services.teams import Member, Team, TeamDetail, TeamWithRole
from warren.cp.services.users import UserMatch

__all__ = [
    "INT32_MAX",
    "AddMemberRequest",
    "ApiKey",
    "ApiKeyCreateRequest",
    "AuthResult",
    "ByocRequest",
    "ErrorEnvelope",
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


# Largest value of a PostgreSQL INT column (and of a protobuf int32).
INT32_MAX = 2**31 - 1


class StrictRequest(BaseModel):
    """Base for JSON request bodies: unknown fields are a 400, never silently ignored, and no
    string may contain NUL (PostgreSQL text cannot store it; it is never legitimate input)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class SignupRequest(StrictRequest):
    email: str
    password: str
    name: str


class LoginRequest(StrictRequest):
    email: str
    password: str


class SwitchTeamRequest(StrictRequest):
    team_id: str | None = None


class ApiKeyCreateRequest(StrictRequest):
    name: str | None = None


class TeamNameRequest(StrictRequest):
    name: str


class AddMemberRequest(StrictRequest):
    email: str | None = None


class RoleRequest(StrictRequest):
    role: str | None = None


class ByocRequest(StrictRequest):
    enabled: StrictBool
