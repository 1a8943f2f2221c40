"""The E2B-compatible listener (docs/e2b.md): E2B's SDKs, unchanged, against Warren.

A separate ASGI app on its own port (``--e2b-port``, 3000 by default) because the dashboard owns
``/sandboxes`` on the main one. It shares the control plane's state (database, host clients,
scheduler) and holds no rule of its own: every route translates to ``cp.services``.
"""

from warren.cp.e2b.app import create_e2b_app, with_e2b_listener

__all__ = ["create_e2b_app", "with_e2b_listener"]
