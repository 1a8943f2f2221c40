"""The E2B listener is up beside the main API on a live platform, routes by header, and answers
what it does not serve in E2B's error shape."""

from __future__ import annotations

import httpx
import pytest

from tests.harness.platform import Platform

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


def test_unsupported_call_is_a_501_in_e2b_shape(platform: Platform) -> None:
    r = httpx.get(platform.cp.e2b_url + "/volumes", headers={"X-API-KEY": platform.api_key}, timeout=30)
    assert r.status_code == 501
    body = r.json()
    assert body["code"] == 501 and "not supported" in body["message"]


def test_main_port_does_not_serve_e2b(platform: Platform) -> None:
    r = httpx.get(platform.url + "/v2/sandboxes", headers={"X-API-KEY": platform.api_key}, timeout=30)
    assert r.status_code == 404


def _envd(platform: Platform, sandbox_id: str, token: str | None) -> dict[str, str]:
    h = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"}
    if token is not None:
        h["X-Access-Token"] = token
    return h


def test_envd_health_needs_the_sandbox_token(platform: Platform) -> None:
    from tests.harness.cp import JWT_SECRET
    from warren.cp.services.envd_tokens import envd_access_token
    from warren.sdk import Sandbox

    url = platform.cp.e2b_url + "/health"
    with Sandbox.create(**platform.sdk()) as sbx:
        token = envd_access_token(JWT_SECRET, sbx.id)
        assert httpx.get(url, headers=_envd(platform, sbx.id, token), timeout=30).status_code == 204
        for wrong in (None, "", "ea_x", token + "x", envd_access_token(JWT_SECRET, "sb-" + "0" * 25)):
            r = httpx.get(url, headers=_envd(platform, sbx.id, wrong), timeout=30)
            assert r.status_code == 401, (wrong, r.text)
            assert r.json()["code"] == 401
        sbx.pause()
        r = httpx.get(url, headers=_envd(platform, sbx.id, token), timeout=30)
        assert r.status_code == 502 and "was not found" in r.json()["message"]
    r = httpx.get(url, headers=_envd(platform, sbx.id, token), timeout=30)  # killed
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    for bad_id in ("sb-" + "0" * 25, "nonsense", "sb-ABC", "../../etc"):
        r = httpx.get(url, headers=_envd(platform, bad_id, envd_access_token(JWT_SECRET, bad_id)), timeout=30)
        assert r.status_code == 502 and "was not found" in r.json()["message"], r.text


def test_envd_unknown_rpc_is_unimplemented(platform: Platform) -> None:
    from tests.harness.cp import JWT_SECRET
    from warren.cp.services.envd_tokens import envd_access_token
    from warren.sdk import Sandbox

    with Sandbox.create(**platform.sdk()) as sbx:
        h = _envd(platform, sbx.id, envd_access_token(JWT_SECRET, sbx.id))
        r = httpx.post(
            platform.cp.e2b_url + "/nope.Nope/Call", headers={**h, "Content-Type": "application/json"},
            content=b"{}", timeout=30,
        )  # fmt: skip
        assert r.status_code == 501 and r.json()["code"] == "unimplemented"


def test_e2b_answers_carry_a_request_id(platform: Platform) -> None:
    r = httpx.get(platform.cp.e2b_url + "/volumes", headers={"X-Request-Id": "e2b-trace-1"}, timeout=30)
    assert r.headers["x-request-id"] == "e2b-trace-1"
    hostile = "x" * 500 + "<script>"
    r = httpx.get(platform.cp.e2b_url + "/volumes", headers={"X-Request-Id": hostile}, timeout=30)
    assert r.headers["x-request-id"] and r.headers["x-request-id"] != hostile
