"""The app's routers: the REST API, then the dashboard. To add one: import it and append it to
``ROUTERS`` (a one-line edit)."""

from __future__ import annotations

from fastapi import APIRouter

from warren.cp.api import (
    admin,
    api_keys,
    audit,
    auth,
    egress,
    file_urls,
    files,
    hosts,
    invitations,
    limits,
    metrics,
    oauth,
    preview,
    prometheus,
    pty,
    sandbox_network,
    sandboxes,
    snapshots,
    teams,
    templates,
    users,
    watch,
)
from warren.cp.api import exec as exec_api
from warren.cp.dashboard import router as dashboard_router

# Order matters for speed, not meaning: FastAPI tries routers in this order, so the hot
# API-key/JWT read paths (sandboxes, snapshots, teams) come first. Routers sharing a path
# prefix keep their relative order (``/v1/sandboxes`` before its sub-routers). The dashboard
# (the non-API paths) comes last.
ROUTERS: list[APIRouter] = [
    sandboxes.router,
    sandbox_network.router,
    exec_api.router,
    pty.router,
    files.router,
    file_urls.router,
    watch.router,
    metrics.router,
    snapshots.router,
    templates.router,
    teams.router,
    invitations.router,
    api_keys.router,
    auth.router,
    oauth.router,
    users.router,
    admin.router,
    egress.router,
    preview.router,
    limits.router,
    hosts.router,
    audit.router,
    prometheus.router,
    dashboard_router,
]
