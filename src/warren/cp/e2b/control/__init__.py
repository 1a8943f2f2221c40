"""E2B's control API (docs/e2b.md §2): sandboxes, their lifetime, pause and connect, metrics and
snapshots, with E2B's field names, status codes and ``{"code", "message"}`` errors."""

from warren.cp.e2b.control.app import control_app

__all__ = ["control_app"]
