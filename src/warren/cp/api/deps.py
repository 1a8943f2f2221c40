"""Request dependencies: the app's state and the three auth kinds (docs/spec.md §2.0, docs/design.md §4).

The checks themselves are :func:`warren.cp.services.authn.authenticate` (one query re-reads the
user, the membership, the team's ``deleted_at`` and ``is_admin`` on every request); these
dependencies only read the credentials from the headers and apply the per-team rate limit. Each
auth kind is one dependency FastAPI resolves (the credential schemes are called inside it), and
:func:`document_auth` gives the OpenAPI document the security FastAPI cannot see then.

The one exception to "the token's team must be live and the user a member" is
:data:`UserSession`, used only by the routes a user needs to find or make a team
(``GET/POST /v1/teams``, ``POST /v1/auth/switch-team``, ``/v1/invitations…``, ``GET
/v1/users/me``) and by ``/v1/teams/{id}…`` (whose own checks give SPEC's 404/403 answers, and
403 ``no_team`` to a teamless token): there the request proceeds with ``ctx.team_id = None``
when the token's team is deleted, the membership is gone or the token is teamless (signed in
with no live team), so such a user can still answer invitations, list, create and switch
teams. Every other route refuses a teamless token with 403 ``no_team``. See docs/auth.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import OpenAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

from warren.config import Settings
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.security import credentials
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services.context import AuthContext
from warren.cp.state import AppState, state_of
from warren.cp.state import sign_in_attempt as sign_in_attempt  # for cp/api/auth.py and oauth.py
from warren.cp.store import LayerStore
from warren.errors import Forbidden


# ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a worker thread, and that
# thread hop would cost more than everything else in a cached authenticated read.
async def get_state(request: Request) -> AppState:
    return state_of(request)


State = Annotated[AppState, Depends(get_state)]


async def get_engine(request: Request) -> AsyncEngine:
    return state_of(request).engine


async def get_app_settings(request: Request) -> Settings:
    return state_of(request).settings


async def get_pool(request: Request) -> HostClientPool:
    return state_of(request).pool


async def get_scheduler(request: Request) -> Scheduler:
    return state_of(request).scheduler


async def get_ca(request: Request) -> CertificateAuthority:
    return state_of(request).ca


async def get_store(request: Request) -> LayerStore:
    return state_of(request).store


Db = Annotated[AsyncEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
Pool = Annotated[HostClientPool, Depends(get_pool)]
Sched = Annotated[Scheduler, Depends(get_scheduler)]
CA = Annotated[CertificateAuthority, Depends(get_ca)]
Store = Annotated[LayerStore, Depends(get_store)]

# The two credential schemes. The auth dependencies below call them directly rather than
# declaring them as dependencies of their own: every dependency FastAPI resolves costs a request
# ~85 Python calls of solving, about what the whole API-key check costs, so each auth kind is ONE
# resolution. FastAPI then cannot see them; :func:`document_auth` writes the security it would
# have derived from them into the OpenAPI document.
_bearer_scheme = HTTPBearer(auto_error=False, description="User JWT from signup/login/switch-team")
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="Team API key (wrn_…)")


# As dependencies, for a route that reads the credentials itself (``GET /metrics``): FastAPI
# documents the schemes from them.
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]
ApiKey = Annotated[str | None, Depends(_api_key_scheme)]


async def _credentials(request: Request) -> credentials.Credentials:
    """The request's credentials, by the schemes' own header rules (bearer, then key)."""
    bearer = await _bearer_scheme(request)
    api_key = await _api_key_scheme(request)
    return credentials.from_headers(api_key, bearer.credentials if bearer else None, request.headers)


async def current_user(request: Request) -> AuthContext:
    state = state_of(request)
    creds = await _credentials(request)
    return await state.gate.admit(creds, require_user=True)


async def team_context(request: Request) -> AuthContext:
    state = state_of(request)
    creds = await _credentials(request)
    return await state.gate.admit(creds, require_user=False)


async def admin_user(ctx: Annotated[AuthContext, Depends(current_user)]) -> AuthContext:
    if not ctx.is_admin:
        raise Forbidden("admin access required")
    return ctx


@dataclass(frozen=True)
class JwtSession:
    """A verified user whose token's team may be gone: ``ctx.team_id`` is None then.
    ``token_team_id`` is the team the JWT names (for docs/spec.md §2.4's path-equals-JWT-team rule),
    None for a teamless token."""

    ctx: AuthContext
    token_team_id: uuid.UUID | None


async def user_session(request: Request) -> JwtSession:
    state = state_of(request)
    creds = await _credentials(request)
    ctx, token_team_id = await state.gate.admit_session(creds)
    return JwtSession(ctx=ctx, token_team_id=token_team_id)


CurrentUser = Annotated[AuthContext, Depends(current_user)]
TeamContext = Annotated[AuthContext, Depends(team_context)]
AdminUser = Annotated[AuthContext, Depends(admin_user)]
UserSession = Annotated[JwtSession, Depends(user_session)]

# The error statuses every authenticated route can answer, for ``responses=``: 429 is the
# per-team request rate limit.
AUTH_ERRORS: tuple[int, ...] = (401, 403, 429)

# What the auth dependencies stand for in the OpenAPI document (they call the schemes themselves).
_AUTH_DEPENDENCIES = frozenset({current_user, team_context, user_session})
_SCHEMES = (_bearer_scheme, _api_key_scheme)
# The operation's keys FastAPI writes before ``security`` (``get_openapi_operation_metadata``).
_HEAD_KEYS = frozenset({"tags", "summary", "description", "operationId", "deprecated"})


def _authenticates(dependant: Dependant) -> bool:
    return any(d.call in _AUTH_DEPENDENCIES or _authenticates(d) for d in dependant.dependencies)


def _with_security(operation: dict[str, Any], security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """``operation`` with ``security`` where FastAPI's ``get_openapi_path`` puts it: after the
    operation's metadata (its model's encoding then keeps or moves it, as for FastAPI's own)."""
    out: dict[str, Any] = {}
    for key, value in operation.items():
        if "security" not in out and key not in _HEAD_KEYS:
            out["security"] = [*security, *(r for r in operation.get("security", ()) if r not in security)]
        if key != "security":
            out[key] = value
    out.setdefault("security", security)
    return out


def document_auth(spec: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """``spec`` (FastAPI's OpenAPI document of ``routes``) with the security FastAPI derives for a
    route that has the two schemes among its dependencies, on every route that authenticates
    through :func:`current_user`, :func:`team_context` or :func:`user_session`: the operations'
    ``security`` and the schemes in ``components.securitySchemes`` (in the order of first use),
    then encoded by FastAPI's own model, as ``get_openapi`` does last, for its key order. The
    document is the one FastAPI wrote when the schemes were dependencies
    (tests/unit/cp/api/test_auth_openapi.py)."""
    security: list[dict[str, list[str]]] = [{s.scheme_name: []} for s in _SCHEMES]
    ours = {s.scheme_name: jsonable_encoder(s.model, by_alias=True, exclude_none=True) for s in _SCHEMES}
    known = spec.get("components", {}).get("securitySchemes", {})
    used: dict[str, Any] = {}
    for route in iter_route_contexts(routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        mine = _authenticates(route.dependant)
        item = spec["paths"][route.path_format]
        for method in route.methods or ():
            op = item[method.lower()]
            if mine:
                op = item[method.lower()] = _with_security(op, security)
            for name in (name for req in op.get("security", ()) for name in req):
                used.setdefault(name, known.get(name) or ours[name])
    if used:
        spec.setdefault("components", {})["securitySchemes"] = used
    return jsonable_encoder(OpenAPI(**spec), by_alias=True, exclude_none=True)  # type: ignore[no-any-return]
