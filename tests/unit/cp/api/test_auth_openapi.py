"""The auth dependencies (``deps.team_context``, ``current_user``, ``user_session``) are each ONE
dependency FastAPI resolves (they call the credential schemes themselves), and the OpenAPI
document still states the security FastAPI derives when the schemes are dependencies
(``deps.document_auth``): the same document, key order included."""

# No ``from __future__ import annotations``: the routes below take their dependency types from
# local variables, which FastAPI resolves only when annotations are evaluated at definition.
import json
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from warren.config import Settings
from warren.cp.api import deps
from warren.cp.app import create_app
from warren.cp.services.context import AuthContext

AUTH_CALLS = {deps.team_context, deps.current_user, deps.user_session}
SECURITY = [{"HTTPBearer": []}, {"APIKeyHeader": []}]


def _app() -> Any:
    # No database is reached: the OpenAPI document is built from the routes alone.
    settings = Settings(
        database_url="postgresql+asyncpg://u:p@127.0.0.1:1/none",
        jwt_secret="s" * 64,
        public_url="http://127.0.0.1:1",
        run_workers=False,
    )
    return create_app(settings)


def _auth_dependants(dependant: Dependant) -> list[Dependant]:
    out = [d for d in dependant.dependencies if d.call in AUTH_CALLS]
    return out + [a for d in dependant.dependencies for a in _auth_dependants(d)]


def test_every_authenticated_route_resolves_one_dependency_and_documents_both_schemes() -> None:
    app = _app()
    doc = app.openapi()
    seen = set()
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        found = _auth_dependants(route.dependant)
        if not found:
            continue
        # Nothing below the auth dependency for FastAPI to solve: one resolution per request.
        assert all(d.dependencies == [] for d in found), route.path_format
        for method in route.methods or ():
            assert doc["paths"][route.path_format][method.lower()]["security"] == SECURITY
            seen.add((route.path_format, method))
    assert {("/v1/sandboxes", "POST"), ("/v1/sandboxes/{sandbox_id}/exec", "POST")} <= seen
    assert {("/v1/sandboxes/{sandbox_id}", "GET"), ("/v1/api-keys", "GET"), ("/v1/teams", "GET")} <= seen
    assert list(doc["components"]["securitySchemes"]) == ["HTTPBearer", "APIKeyHeader"]


class Body_(BaseModel):
    name: str


def _routes(team: Any, user: Any, session: Any) -> APIRouter:
    """The shapes of the API's operations (path parameters, a body, none, deprecated, an
    ``openapi_extra``) with the three auth kinds given, and one route without authentication."""
    r = APIRouter(tags=["t"])

    @r.get("/a/{x}", summary="A")
    async def a(x: str, ctx: team) -> dict[str, str]:
        return {}

    @r.post("/b", description="B")
    async def b(body: Annotated[Body_, Body()], ctx: user) -> dict[str, str]:
        return {}

    @r.put("/c", deprecated=True)
    async def c(ctx: session) -> None:
        return None

    @r.delete("/c/{x}")
    async def d(x: str, ctx: session) -> None:
        return None

    @r.get("/open")
    async def open_() -> None:
        return None

    @r.post("/extra/{x}", openapi_extra={"requestBody": {"content": {"application/json": {}}}})
    async def extra(x: str, ctx: team) -> None:
        return None

    return r


def _doc(router: APIRouter, *, document: bool) -> str:
    app = FastAPI()
    app.include_router(router)
    spec = get_openapi(title="t", version="1", routes=app.routes)
    return json.dumps(deps.document_auth(spec, app.routes) if document else spec)


def test_the_document_is_what_fastapi_derives_from_scheme_dependencies() -> None:
    async def with_schemes(bearer: deps.Bearer, api_key: deps.ApiKey) -> None:
        return None  # the old shape: the schemes as the auth dependency's own dependencies

    old = Annotated[None, Depends(with_schemes)]
    reference = _doc(_routes(old, old, old), document=False)
    ours = _doc(_routes(deps.TeamContext, deps.CurrentUser, deps.UserSession), document=True)
    assert ours == reference  # byte for byte: data and key order
    assert '"security"' in ours and '"securitySchemes"' in ours


async def test_dependency_overrides_replace_team_context() -> None:
    """Tests replace the whole authentication with ``dependency_overrides[team_context]``."""
    app = FastAPI()
    ctx = AuthContext(kind="api_key", team_id=None)

    @app.get("/who")
    async def who(c: deps.TeamContext) -> dict[str, str]:
        return {"kind": c.kind}

    async def fake() -> AuthContext:
        return ctx

    app.dependency_overrides[deps.team_context] = fake
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/who")
    assert r.status_code == 200 and r.json() == {"kind": "api_key"}
