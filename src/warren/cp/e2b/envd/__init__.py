"""E2B's in-sandbox API (envd, docs/e2b.md §3), translated to the host agent's RPCs."""

from warren.cp.e2b.envd.app import ENVD_PORT, ENVD_VERSION, envd_app

__all__ = ["ENVD_PORT", "ENVD_VERSION", "envd_app"]
