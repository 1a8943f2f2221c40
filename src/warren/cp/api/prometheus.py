"""``GET /metrics``: the CP's Prometheus metrics (docs/operations.md, "Metrics"). Who may read
them and the figures read at scrape time are ``services/platform_metrics.py``; the in-process
families are ``cp/telemetry.py``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from warren.cp import telemetry
from warren.cp.api.deps import ApiKey, Bearer, Db, SettingsDep
from warren.cp.http_errors import error_responses
from warren.cp.security import credentials
from warren.cp.services import platform_metrics as svc

router = APIRouter(tags=["misc"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401, 403)},
)
async def metrics(
    request: Request, db: Db, settings: SettingsDep, bearer: Bearer, api_key: ApiKey
) -> Response:
    """Prometheus text format. ``Authorization: Bearer`` with a platform admin's JWT or the
    scrape token ``WARREN_METRICS_TOKEN``."""
    creds = credentials.from_headers(api_key, bearer.credentials if bearer else None, request.headers)
    await svc.authorize_scrape(db, settings, creds)
    body = telemetry.render(await svc.scrape_figures(db))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
