"""Session 18's additions to how the preview proxy ends a connection: past a signed URL's (or
its cookie's) expiry, and with the reason the re-check read (a paused sandbox). The whole path,
with a real CP, agent and sandbox: ``tests/security/test_attack_session18_preview_*.py``."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from tests.unit.cp.proxy.test_revocable import GRANT, SB, _Exchange, _forever, _target
from warren import clock, ids
from warren.cp.proxy import app
from warren.cp.services import preview, stream_revocation
from warren.cp.services.traffic_tokens import new_traffic_token


async def _run(scope_type: str, script: Any, expires: float | None) -> tuple[list[dict[str, Any]], Any]:
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}

    scope = {"type": scope_type, "headers": [], "extensions": {}}
    r = app.Route(ids.sandbox_id(SB), 8000, "/", "", by_host=True)
    coro = _Exchange(script)._revocable(GRANT, r, scope, receive, send, _target(), None, expires=expires)  # type: ignore[arg-type]
    return sent, asyncio.create_task(coro)


async def _expire(task: Any, fake_clock: Any) -> None:
    """Past the expiry, the re-check's pass (no statement: nothing else is open) ends it."""
    await asyncio.sleep(0.05)
    assert not task.done()
    fake_clock.advance(3601)
    assert await stream_revocation.recheck(None) == 1  # type: ignore[arg-type]
    await asyncio.wait_for(task, 5)


async def test_a_websocket_closes_past_its_signed_urls_expiry(fake_clock: Any) -> None:
    sent, task = await _run("websocket", _forever({"type": "websocket.accept"}), clock.time_s() + 3600)
    await _expire(task, fake_clock)
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "403 signed_url_expired"}
    assert not stream_revocation._watched


async def test_a_response_not_started_at_the_expiry_is_403_signed_url_expired(fake_clock: Any) -> None:
    sent, task = await _run("http", _forever(None), clock.time_s() + 3600)
    await _expire(task, fake_clock)
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["error"]["code"] == "signed_url_expired"


async def test_a_paused_sandboxs_websocket_is_told_why() -> None:
    sent, task = await _run("websocket", _forever({"type": "websocket.accept"}), None)
    await asyncio.sleep(0.05)
    for w in list(stream_revocation._watched):
        w.revoke("paused")
    await asyncio.wait_for(task, 5)
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "409 sandbox_paused"}


def test_until_when_a_credential_admits() -> None:
    public = stream_revocation.Grant("public", SB, epoch=8000)
    signed = preview.Credentials(sig="s", exp="1900000000")
    assert app._expiry(signed, True, GRANT) == 1900000000.0
    assert app._expiry(preview.Credentials(cookie="1900000001.sig"), False, GRANT) == 1900000001.0
    # The token admitted it (a cookie alongside counts for nothing): no end.
    assert app._expiry(preview.Credentials(token="t", cookie="1900000001.sig"), False, GRANT) is None
    assert app._expiry(preview.Credentials(cookie="1900000001.sig"), False, public) is None


def test_the_sandboxs_own_token_holds_and_another_does_not() -> None:
    token, digest = new_traffic_token()
    target = preview.PreviewTarget(
        sb_uuid=uuid.uuid4(), sandbox_id=ids.sandbox_id(SB), team_id=uuid.UUID(int=2), status="running",
        token_hash=digest, public_ports=frozenset({8000}), auto_resume=False, timeout_sec=60, host_id=None,
        host_address="",
    )  # fmt: skip
    assert app._token_holds(target, token)
    assert not app._token_holds(target, new_traffic_token()[0])
    assert not app._token_holds(_target(), token)
