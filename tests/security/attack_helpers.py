"""What the warm-pool and host-report attack probes share (test_attack_pools_*.py): calls as
the platform admin, as a user (JWT) or with an API key, with the body sent as raw JSON bytes;
SQL on the platform's database; polling with a deadline."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import httpx

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from warren import ids


def raw_json(body: Any) -> dict[str, Any]:
    """``body`` as the JSON bytes an attacker sends (a lone surrogate as its \\u escape)."""
    return {"content": json.dumps(body), "headers": {"Content-Type": "application/json"}}


def admin(platform: Platform, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=120) as c:
        return c.request(method, path, **(raw_json(body) if body is not None else {}))


def as_user(t: Tenant, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=t.url, headers={"Authorization": f"Bearer {t.token}"}, timeout=120) as c:
        return c.request(method, path, **(raw_json(body) if body is not None else {}))


def with_key(t: Tenant, method: str, path: str, body: Any = None) -> httpx.Response:
    with t.client() as c:
        return c.request(method, path, **(raw_json(body) if body is not None else {}))


def sql(platform: Platform, statement: str, **params: Any) -> Any:
    return asyncio.run(platform.sql(statement, **params))


def uuid_of(kind: ids.Kind, external: str) -> uuid.UUID:
    return ids.parse_id(kind, external)


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def dashboard_pages(platform: Platform, *paths: str) -> list[httpx.Response]:
    """``paths`` of the dashboard as the platform admin sees them (signed in with a session)."""
    with httpx.Client(base_url=platform.url, headers={"Origin": platform.url}, timeout=60) as c:
        token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/login").text)
        assert token is not None
        form = {"csrf_token": token[1], "email": platform.email, "password": PASSWORD}
        assert c.post("/login", data=form).status_code in (200, 303)
        return [c.get(p) for p in paths]
