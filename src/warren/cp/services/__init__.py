"""The service layer: every business rule, written once, called by the REST API and the dashboard.

Services take an ``AsyncEngine`` and an :class:`~warren.cp.services.context.AuthContext` plus
typed arguments, raise ``warren.errors`` types and return pydantic models or dataclasses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


def format_timestamp(value: datetime) -> str:
    """RFC 3339 at one-second precision, UTC (docs/spec.md §0.3): ``2026-04-09T19:24:49Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A datetime in Python, an RFC 3339 second-precision string in JSON.
Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
