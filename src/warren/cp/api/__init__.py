"""The REST routers. To add one: import it and append it to ``ROUTERS`` (a one-line edit)."""

from __future__ import annotations

from fastapi import APIRouter

ROUTERS: list[APIRouter] = []
