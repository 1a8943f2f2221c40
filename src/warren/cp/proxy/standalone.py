"""``warren proxy``: the preview proxy as a process of its own (the same code as the CP's), so
preview traffic scales apart from the API. It needs the CP's database and CA (to reach agents
over mTLS) and nothing else; every other path is a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from warren.config import Settings
from warren.cp.db.engine import make_engine
from warren.cp.hosts.byoc_addresses import DialCheck, policy_of
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.http_errors import error_response
from warren.cp.proxy.app import PreviewMiddleware
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services.rate_limits import RefusalBudget
from warren.cp.services.stream_revocation import RevocationWorker


class _Deps:
    def __init__(self) -> None:
        self.engine: object = None
        self.pool: object = None

    def __call__(self, scope: Scope) -> tuple:  # type: ignore[type-arg]
        return self.engine, self.pool


def standalone_app(settings: Settings) -> Starlette:
    settings.require_jwt_secret()
    deps = _Deps()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("WARREN_DATABASE_URL is not set")
        engine = make_engine(
            settings.database_url, pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout_s,
        )  # fmt: skip
        check = DialCheck(engine, policy_of(settings.byoc_allowed_cidrs))  # BYOC addresses
        pool = HostClientPool(CertificateAuthority.from_settings(settings), check)
        deps.engine, deps.pool = engine, pool
        # Connections a revoked credential admitted end within its poll (no kick reaches here).
        revocation = RevocationWorker(engine, settings.stream_recheck_s)
        revocation.start()
        try:
            yield
        finally:
            await revocation.stop()
            await pool.close()
            await engine.dispose()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", "not a sandbox port (/v1/sandboxes/{id}/ports/{port}/…)")

    return Starlette(
        routes=[Route("/healthz", healthz)],
        # Its refusals held past an address's budget, its own (cp/refusal_hold.py).
        middleware=[
            Middleware(
                PreviewMiddleware, settings=settings, deps=deps, budget=RefusalBudget.from_settings(settings)
            )
        ],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )
