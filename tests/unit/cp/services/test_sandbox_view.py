"""``sandboxes.view_json`` (the REST create's answer, written from the row) writes exactly what
``sandbox_model(row)``'s ``model_dump_json(exclude_none=True)`` writes."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from warren.cp.services.sandboxes import sandbox_model, view_json

_T0 = datetime(2026, 12, 4, 18, 30, 5, 123456, tzinfo=UTC)


def _row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.UUID(int=0x1234_5678_9ABC),
        "status": "running",
        "template": "minimal",
        "vcpus": 2,
        "memory_mb": 512,
        "disk_size_mb": 5120,
        "timeout_sec": 300,
        "internet": True,
        "runtime": "runc",
        "paused_state": None,
        "guest_ip": "",
        "host_ip": "10.11.0.2",
        "created_at": _T0,
        "started_at": _T0 + timedelta(seconds=1),
        "last_active_at": _T0 + timedelta(seconds=1),
        "last_updated": _T0 + timedelta(seconds=1),
        "public_ports": None,
        "auto_resume": None,
    }
    row.update(over)
    return row


def _model_bytes(row: dict[str, Any], token: str | None) -> bytes:
    view = sandbox_model(row)
    view.traffic_token = token
    return view.model_dump_json(exclude_none=True).encode()


VARIANTS: list[dict[str, Any]] = [
    {},
    {"status": "pending", "started_at": None, "last_active_at": None, "host_ip": ""},
    {"status": "paused", "paused_state": "disk"},
    {"status": "paused", "paused_state": None},
    {"status": "paused", "paused_state": "memory", "auto_resume": True},
    {"paused_state": "disk"},  # only a paused sandbox shows it
    {"runtime": None},
    {"runtime": "gvisor", "internet": False, "guest_ip": "10.0.0.5", "host_ip": None},
    {"public_ports": [], "auto_resume": False},
    {"public_ports": [8080, 3000, 49983]},
    {"created_at": datetime(2026, 1, 2, 3, 4, 5)},  # naive: taken as UTC
    {"last_updated": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))},
    {"template": "team-tpl:v12", "vcpus": 0, "memory_mb": 2147483647, "timeout_sec": 0},
    # Strings the database could hold: escapes must be pydantic-core's.
    {"template": 'é/ü"\\\n\t\x00\x1f\x7f\u2028😀'},
    {"status": "error", "host_ip": "fe80::1"},
]


def test_view_json_equals_the_models_dump() -> None:
    for over, token in itertools.product(VARIANTS, (None, "wt_abc-DEF_123")):
        row = _row(**over)
        assert view_json(row, token) == _model_bytes(row, token), over
