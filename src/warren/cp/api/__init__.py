"""The REST routers. To add one: import it and append it to ``ROUTERS`` (a one-line edit)."""

from __future__ import annotations

from fastapi import APIRouter

from warren.cp.api import (
    admin,
    api_keys,
    auth,
    files,
    hosts,
    metrics,
    oauth,
    sandboxes,
    snapshots,
    teams,
    users,
)
from warren.cp.api import exec as exec_api
from warren.cp.dashboard import router as dashboard_router

ROUTERS: list[APIRouter] = [
    auth.router,
    oauth.router,
    api_keys.router,
    users.router,
    teams.router,
    admin.router,
    hosts.router,
    sandboxes.router,
    exec_api.router,
    files.router,
    snapshots.router,
    metrics.router,
    dashboard_router,
]
