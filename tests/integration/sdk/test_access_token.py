"""Rotating a sandbox's E2B envd access token from Warren's side (docs/api.md,
``POST /v1/sandboxes/{id}/access-token``): the API, the SDK (sync and async, one op) and the CLI
(``warren sandbox rotate-token``). Each answer's token is the one E2B's control API now hands
out, and the one before it stops opening envd (tests/security/test_attack_session15_envd_tokens.py
probes the old token further)."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from tests.harness.platform import Platform
from warren import AsyncSandbox, Sandbox
from warren.cli.main import app
from warren.sdk import ConflictError, NotFoundError

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]


def e2b_token(platform: Platform, sandbox_id: str) -> str:
    r = httpx.get(f"{platform.cp.e2b_url}/sandboxes/{sandbox_id}", headers=platform.headers, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["envdAccessToken"])


def opens_envd(platform: Platform, sandbox_id: str, token: str) -> int:
    h = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}
    r = httpx.get(f"{platform.cp.e2b_url}/files", params={"path": "/etc/hostname"}, headers=h, timeout=60)
    return r.status_code


def test_api(platform: Platform, sbx: Sandbox) -> None:
    before = e2b_token(platform, sbx.id)
    with httpx.Client(base_url=platform.url, headers=platform.headers, timeout=60) as c:
        r = c.post(f"/v1/sandboxes/{sbx.id}/access-token")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sandbox_id"] == sbx.id and body["access_token"] != before
        assert e2b_token(platform, sbx.id) == body["access_token"]
        assert opens_envd(platform, sbx.id, before) == 401
        assert opens_envd(platform, sbx.id, body["access_token"]) == 200
        assert c.post("/v1/sandboxes/sb-0000000000000000000000000/access-token").status_code == 404
        assert c.post("/v1/sandboxes/nope/access-token").status_code == 400
        sbx.pause()  # a paused sandbox's token rotates too (it opens envd again once resumed)
        r = c.post(f"/v1/sandboxes/{sbx.id}/access-token")
        assert r.status_code == 200 and e2b_token(platform, sbx.id) == r.json()["access_token"]
        sbx.kill()
        assert c.post(f"/v1/sandboxes/{sbx.id}/access-token").status_code == 409


def test_sdk_sync(platform: Platform, sbx: Sandbox) -> None:
    first = sbx.rotate_access_token()
    second = sbx.rotate_access_token()
    assert first != second and e2b_token(platform, sbx.id) == second
    assert opens_envd(platform, sbx.id, first) == 401 and opens_envd(platform, sbx.id, second) == 200
    gone = Sandbox.connect(sbx.id, **platform.sdk())
    sbx.kill()
    with pytest.raises((ConflictError, NotFoundError)):
        gone.rotate_access_token()
    gone.close()


async def test_sdk_async(platform: Platform) -> None:
    async with await AsyncSandbox.create(**platform.sdk()) as s:
        before = e2b_token(platform, s.id)
        token = await s.rotate_access_token()
        assert token != before and e2b_token(platform, s.id) == token
        assert opens_envd(platform, s.id, token) == 200


def test_cli(platform: Platform, sbx: Sandbox) -> None:
    env = {"WARREN_URL": platform.url, "WARREN_API_KEY": platform.api_key, "WARREN_ACCESS_TOKEN": ""}
    runner = CliRunner()
    r = runner.invoke(app, ["sandbox", "rotate-token", "--help"], env=env)
    assert r.exit_code == 0 and "warren sandbox rotate-token" in r.stdout
    r = runner.invoke(app, ["sandbox", "rotate-token", sbx.id], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("ea_") and e2b_token(platform, sbx.id) == token
    r = runner.invoke(app, ["sandbox", "rotate-token", sbx.id, "--json"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert e2b_token(platform, sbx.id) == json.loads(r.stdout)["access_token"] != token
