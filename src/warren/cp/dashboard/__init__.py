"""The web dashboard: server-rendered pages on the same service layer as the REST API.

``router`` (pages, sign-in, actions and static files) is listed in ``warren.cp.api.ROUTERS``.
"""

from warren.cp.dashboard.routes import router

__all__ = ["router"]
