"""The control-plane ASGI app factory.

``create_app(settings)`` wires: the typed app state (``warren.cp.state.AppState``), the error
envelope (``http_errors``), a request body cap, the routers listed in ``warren.cp.api.ROUTERS``
(the dashboard last), ``/healthz``, and the OpenAPI documents plus an offline Swagger UI.

Its lifespan is the one composition root: it builds the database engine, the CA, the host
client pool, the scheduler and the host monitor into the app state, starts the monitor loop
(unless ``settings.run_workers`` is off) and takes them down in reverse order.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import swagger_ui_bundle
import yaml
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.types import ASGIApp

from warren.config import Settings, get_settings
from warren.cp import http_errors
from warren.cp.body_cap import BodyCapMiddleware
from warren.cp.dashboard.web import with_page_nonce
from warren.cp.db.engine import autocommit, make_engine
from warren.cp.hosts.byoc_addresses import DialCheck, policy_of
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.hosts.scheduler import RoundRobinScheduler
from warren.cp.http_errors import ErrorEnvelope
from warren.cp.observe import ObserveMiddleware
from warren.cp.proxy.app import PreviewMiddleware
from warren.cp.refusal_hold import RefusalHoldMiddleware
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services import audit
from warren.cp.services.authn import Gate
from warren.cp.services.interpreter_template import interpreter_template
from warren.cp.services.layer_gc import LayerGC
from warren.cp.services.lifetime_sweeper import LifetimeSweeper
from warren.cp.services.platform_templates import base_template
from warren.cp.services.replica_lease import ReplicaLease
from warren.cp.services.retention import RetentionWorker
from warren.cp.services.stream_revocation import RevocationWorker
from warren.cp.services.template_builds import BuildRunner
from warren.cp.state import AppState, state_of
from warren.cp.store import make_store

log = logging.getLogger("warren.cp")


def _downgrade_for_swagger(spec: dict[str, Any]) -> dict[str, Any]:
    """The bundled Swagger UI (4.x) renders OpenAPI 3.0 only; FastAPI emits 3.1. Rewrite the
    3.1-only constructs it uses (``anyOf [X, null]``, ``const``, ``examples``) for the viewer.
    ``/openapi.json`` itself stays 3.1 and exact."""
    out = copy.deepcopy(spec)
    out["openapi"] = "3.0.3"

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            any_of = node.get("anyOf")
            if isinstance(any_of, list) and any(o == {"type": "null"} for o in any_of):
                rest = [o for o in any_of if o != {"type": "null"}]
                node = {k: v for k, v in node.items() if k != "anyOf"}
                if len(rest) == 1:
                    node.update(rest[0])
                else:
                    node["anyOf"] = rest
                node["nullable"] = True
            if "const" in node:
                node["enum"] = [node.pop("const")]
            if "examples" in node and isinstance(node["examples"], list):
                ex = node.pop("examples")
                if ex:
                    node["example"] = ex[0]
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    fixed: dict[str, Any] = fix(out)
    return fixed


def _postprocess_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Every operation documents 400 with the error envelope instead of FastAPI's 422 (our
    validation errors are 400s), and the FastAPI validation schemas go away."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    envelope_ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    if "ErrorEnvelope" not in schemas:
        schemas.update(
            {
                name: schema
                for name, schema in ErrorEnvelope.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
                .get("$defs", {})
                .items()
            }
        )
        env = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
        env.pop("$defs", None)
        schemas["ErrorEnvelope"] = env
    for path_item in spec.get("paths", {}).values():
        for op in path_item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            responses.pop("422", None)
            has_input = bool(op.get("parameters")) or "requestBody" in op
            if has_input and "400" not in responses:
                responses["400"] = {
                    "description": "Invalid request",
                    "content": {"application/json": {"schema": envelope_ref}},
                }
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return spec


def _install_openapi(app: FastAPI) -> None:
    from warren.cp.api.deps import document_auth

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            # The auth dependencies' schemes, which FastAPI does not see (cp/api/deps.py).
            spec = document_auth(spec, app.routes)
            app.openapi_schema = _postprocess_openapi(spec)
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]

    @app.get("/openapi.yaml", include_in_schema=False)
    async def openapi_yaml() -> Response:
        body = yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True)
        return Response(body, media_type="application/yaml")

    @app.get("/docs/openapi.json", include_in_schema=False)
    async def openapi_for_docs() -> JSONResponse:
        return JSONResponse(_downgrade_for_swagger(app.openapi()))

    # Swagger UI assets come from the installed swagger_ui_bundle package: /docs works offline.
    app.mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/docs/openapi.json",
            title="Warren API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
        return with_page_nonce(bytes(page.body).decode())


def _limit_malloc_arenas() -> None:
    """glibc gives threads that allocate their own malloc arenas (up to 8 per core). gRPC's
    threads then strand freed 64 KiB file-relay buffers in arenas of their own and the CP's RSS
    climbs by tens of MiB during a large download; two arenas keep it flat. Same effect as
    ``MALLOC_ARENA_MAX=2``, which wins when set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # -8 = M_ARENA_MAX


@asynccontextmanager
async def _hosts(state: AppState) -> AsyncIterator[None]:
    """The hosts subsystem: this replica's lease, the mTLS client pool, the scheduler and the
    monitor (its loop only with ``settings.run_workers``)."""
    settings = state.settings
    # This replica's lease first and released last: its creates record it (docs/hosts.md).
    state.replica = ReplicaLease(state.engine, settings)
    await state.replica.acquire()
    state.replica.start()
    state.ca = CertificateAuthority.from_settings(settings)
    # BYOC hosts are dialled only at addresses the operator allows (docs/hosts.md).
    state.pool = HostClientPool(state.ca, DialCheck(state.engine, policy_of(settings.byoc_allowed_cidrs)))
    state.scheduler = RoundRobinScheduler(min_free_disk_mb=settings.host_min_free_disk_mb)
    state.store = make_store(settings)
    state.layer_gc = LayerGC(state.engine, state.store, state.pool, settings)
    state.builds = BuildRunner(state.engine, state.pool, state.scheduler, state.store, settings)
    state.monitor = HostMonitor(
        state.engine,
        state.pool,
        audit.record,
        interval_s=settings.monitor_interval_s,
        stale_s=settings.heartbeat_stale_s,
        concurrency=settings.monitor_concurrency,
        pending_grace_s=settings.pending_grace_s,
        replica_id=state.replica.id,
    )
    lifetimes = LifetimeSweeper(state.engine, state.pool, settings)
    state.retention = RetentionWorker(state.engine, settings)
    # Open streams end when their credentials are revoked; this replica's own streams, so always.
    revocation = RevocationWorker(state.engine, settings.stream_recheck_s)
    revocation.start()
    if settings.run_workers:
        state.monitor.start()  # the first pass runs at once, then every monitor_interval_s
        lifetimes.start()  # every lifetime_sweep_interval_s, on every replica (docs/e2b.md §2)
        state.layer_gc.start()  # every layer_gc_interval_s, one replica at a time
        state.builds.start_sweeper()  # fails builds whose replica died (stale heartbeat)
        state.retention.start()  # every retention_interval_s, on every replica (docs/operations.md)
    base = base_template(state.engine, state.builds, settings.base_template_spec)
    if settings.run_workers and settings.build_base_template:
        base.start()  # `base` built in the background once a host is online (warren up)
    interpreter = interpreter_template(state.engine, state.builds)
    if settings.run_workers and settings.build_interpreter_template:
        interpreter.start()  # the same for `code-interpreter-v1` (docs/e2b.md §4), opt-in
    try:
        yield
    finally:
        await interpreter.stop()
        await revocation.stop()
        await base.stop()
        await state.retention.stop()
        await lifetimes.stop()
        await state.builds.stop()  # this replica's builds end as failed: "control plane stopped"
        await state.layer_gc.stop()
        await state.monitor.stop()
        await state.pool.close()
        await state.replica.stop()
        await state.replica.release()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _limit_malloc_arenas()
    secret_ok = settings.require_jwt_secret()  # refuse to build an app that would sign with a weak key
    del secret_ok
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("WARREN_DATABASE_URL is not set")
        state.engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
        )
        state.gate = Gate(state.engine, settings.jwt_secret, state.team_limiter)
        try:
            async with _hosts(state):
                yield
        finally:
            await state.engine.dispose()

    app = FastAPI(
        title="Warren",
        version="0.1.0",
        description="Warren control plane: accounts, teams, API keys, sandboxes, snapshots and hosts.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state = state
    from warren.cp.dashboard.web import bare_error_page

    http_errors.install_error_handlers(app, html_page=bare_error_page)
    app.add_middleware(BodyCapMiddleware, settings=settings, budget=state.body_budget)
    # Inside the preview middleware: only the platform's own refusals (cp/refusal_hold.py).
    app.add_middleware(RefusalHoldMiddleware, budget=state.refusal_budget)
    # Outermost: proxied sandbox ports (docs/networking.md §3) stream past the body cap.
    # Its own refusals (bad credentials, unknown sandboxes) join the same budget; a sandbox's don't.
    app.add_middleware(
        PreviewMiddleware, settings=settings, deps=lambda scope: (state.engine, state.pool),
        budget=state.refusal_budget,
    )  # fmt: skip
    # Outermost of all: every request's id, client address and latency (cp/observe.py).
    app.add_middleware(ObserveMiddleware)

    from warren.cp.api import ROUTERS

    for router in ROUTERS:
        app.include_router(router)

    @app.get("/healthz", tags=["misc"], responses=http_errors.error_responses(500))
    async def healthz(request: Request) -> dict[str, str]:
        """Liveness plus one database round trip."""
        async with autocommit(state_of(request).engine) as conn:
            await conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    _install_openapi(app)
    return app


def state_of_app(app: FastAPI) -> AppState:
    """The typed state ``create_app`` put on ``app``."""
    state = app.state
    assert isinstance(state, AppState)
    return state


def create_server_app(settings: Settings | None = None) -> ASGIApp:
    """What ``warren cp`` serves: :func:`create_app`, plus the E2B-compatible app for requests
    that arrive on ``settings.e2b_port`` when it is set (docs/e2b.md §1)."""
    settings = settings or get_settings()
    app = create_app(settings)
    if not settings.e2b_port:
        return app
    from warren.cp.e2b import with_e2b_listener

    return with_e2b_listener(app, state_of_app(app), settings.e2b_port)
