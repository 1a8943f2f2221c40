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

# Order matters for speed, not meaning: FastAPI tries routers in this order, so the hot
# API-key/JWT read paths (sandboxes, snapshots, teams) come first. Routers sharing a path
# prefix keep their relative order (``/v1/sandboxes`` before its sub-routers). The app adds
# the dashboard (the non-API paths) after these; it imports ``deps`` from this package, so it
# is not listed here.
ROUTERS: list[APIRouter] = [
    sandboxes.router,
    exec_api.router,
    files.router,
    metrics.router,
    snapshots.router,
    teams.router,
    api_keys.router,
    auth.router,
    oauth.router,
    users.router,
    admin.router,
    hosts.router,
]
