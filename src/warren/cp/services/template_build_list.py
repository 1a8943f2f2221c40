"""The team's most recent builds across all its templates (the dashboard's Templates page).

Beside ``template_builds.list_builds`` (one template's builds) because a first build that
failed has no template row yet: only the builds table knows it, and the page must show it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.db.engine import autocommit
from warren.cp.db.tables import template_builds
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.template_builds import _WITH_VERSION, BuildInfo, _build_model

RECENT_LIMIT = 20


async def recent_builds(engine: AsyncEngine, ctx: AuthContext, limit: int = RECENT_LIMIT) -> list[BuildInfo]:
    """The team's last ``limit`` builds, newest first (the index on (team_id, created_at))."""
    team_id = require_team(ctx)
    async with autocommit(engine) as conn:
        rows = (
            await conn.execute(
                _WITH_VERSION.where(template_builds.c.team_id == team_id)
                .order_by(template_builds.c.created_at.desc())
                .limit(limit)
            )
        ).mappings()
        return [_build_model(r, r["version"]) for r in rows]
