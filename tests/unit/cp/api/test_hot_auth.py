"""The routes on ``hot_auth.TeamContextDirect`` document the same security as ``TeamContext``
routes (FastAPI derives that one from the scheme dependencies, which the direct one lacks)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from fastapi.routing import APIRoute

from warren.config import Settings
from warren.cp import api
from warren.cp.api.hot_auth import team_context_direct
from warren.cp.app import create_app


def _app() -> Any:
    # No database is reached: the OpenAPI document is built from the routes alone.
    settings = Settings(
        database_url="postgresql+asyncpg://u:p@127.0.0.1:1/none",
        jwt_secret="s" * 64,
        public_url="http://127.0.0.1:1",
        run_workers=False,
    )
    return create_app(settings)


def _direct_routes() -> list[APIRoute]:
    """Every route of the API's routers that authenticates through ``team_context_direct``."""
    out = []
    for info in pkgutil.iter_modules(api.__path__):
        router = getattr(importlib.import_module(f"warren.cp.api.{info.name}"), "router", None)
        for r in getattr(router, "routes", ()):
            calls = [d.call for d in r.dependant.dependencies] if isinstance(r, APIRoute) else []
            if team_context_direct in calls:
                out.append(r)
    return out


def test_direct_routes_document_team_context_security() -> None:
    doc = _app().openapi()
    reference = doc["paths"]["/v1/sandboxes/{sandbox_id}"]["get"]["security"]  # a TeamContext route
    assert reference == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    direct = _direct_routes()
    assert {(r.path, m) for r in direct for m in r.methods or ()} >= {
        ("/v1/sandboxes", "POST"),
        ("/v1/sandboxes/{sandbox_id}/exec", "POST"),
    }
    for r in direct:
        for method in r.methods or ():
            assert doc["paths"][r.path][method.lower()]["security"] == reference, (r.path, method)
