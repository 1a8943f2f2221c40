"""How the preview proxy ends a connection whose credential was revoked (session 17,
``Proxy._revocable`` and ``stream_revocation.watching``); what each connection rests on
(``preview.grant_of``: a credential, or a public port staying public). The whole path, with a
real CP, agent and sandbox, is ``tests/security/test_attack_session17_preview_revocation.py``
and ``test_attack_session17_public_revocation.py``."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from warren import ids
from warren.config import Settings
from warren.cp.proxy.app import Proxy
from warren.cp.proxy.routing import Route
from warren.cp.services import preview, stream_revocation

SB = uuid.UUID(int=0x5E55_1017_0001)
GRANT = stream_revocation.Grant("preview", SB, h="ab" * 32)


def _target(public: frozenset[int] = frozenset(), all_public: bool = False) -> preview.PreviewTarget:
    return preview.PreviewTarget(
        sb_uuid=SB, sandbox_id=ids.sandbox_id(SB), team_id=uuid.UUID(int=2), status="running",
        token_hash="ab" * 32, public_ports=public, auto_resume=False, timeout_sec=60, host_id=None,
        host_address="", all_ports_public=all_public,
    )  # fmt: skip


def test_what_a_connection_rests_on() -> None:
    public = stream_revocation.Grant("public", SB, epoch=8000)  # no credential: the port public
    target = _target(frozenset({8000}))
    assert preview.grant_of(target, 8000, signed=False) == public
    assert preview.grant_of(target, 8000, signed=False) is preview.grant_of(target, 8000, signed=False)
    assert preview.grant_of(_target(all_public=True), 8000, signed=False) == public
    assert preview.grant_of(_target(), 8000, signed=False) == GRANT  # the token or the cookie
    assert preview.grant_of(_target(frozenset({8000})), 8000, signed=True) == GRANT  # a signed URL


def test_a_watched_connection_is_revoked_once_and_only_while_registered() -> None:
    calls: list[int] = []
    with stream_revocation.watching(GRANT, lambda: calls.append(1)) as w:
        w.revoke()
        w.revoke()
    assert calls == [1]
    with stream_revocation.watching(GRANT, lambda: calls.append(2)) as late:
        pass
    late.revoke()  # it ended while the re-check read the database: nothing to cut
    assert calls == [1]


class _Exchange(Proxy):
    """A proxy whose exchange is a script: the revocation mechanics alone."""

    def __init__(self, script: Any) -> None:
        super().__init__(Settings(jwt_secret="x" * 32))
        self.script = script

    async def _exchange(self, r: Route, scope: Any, receive: Any, send: Any, target: Any, pool: Any) -> None:
        await self.script(send)


async def _run(
    scope_type: str, script: Any, revoke: bool = True, grant: stream_revocation.Grant = GRANT
) -> tuple[list[dict[str, Any]], Any]:
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}

    proxy = _Exchange(script)
    scope = {"type": scope_type, "headers": [], "extensions": {}}
    r = Route(ids.sandbox_id(SB), 8000, "/", "", by_host=True)
    task = asyncio.create_task(proxy._revocable(grant, r, scope, receive, send, _target(), None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    if revoke:
        for w in list(stream_revocation._watched):
            w.revoke()
    return sent, task


def _forever(first: dict[str, Any] | None) -> Any:
    async def script(send: Any) -> None:
        if first is not None:
            await send(first)
        await asyncio.sleep(3600)

    return script


async def test_an_accepted_websocket_closes_with_1008() -> None:
    sent, task = await _run("websocket", _forever({"type": "websocket.accept"}))
    await asyncio.wait_for(task, 5)
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "401 access_revoked"}
    assert not stream_revocation._watched


async def test_a_response_under_way_is_left_unfinished() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": []}
    sent, task = await _run("http", _forever(start))
    await asyncio.wait_for(task, 5)
    assert sent == [start]  # no end of body: the server closes the connection


async def test_a_response_not_started_is_401_access_revoked() -> None:
    sent, task = await _run("http", _forever(None))
    await asyncio.wait_for(task, 5)
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "access_revoked"


def test_all_ports_public_keeps_a_bounded_number_of_grants() -> None:
    target = _target(all_public=True)
    for port in range(1, 1001):
        assert preview.grant_of(target, port, signed=False).epoch == port
    assert len(target.public_grants) == preview.MAX_PUBLIC_PORTS


async def test_a_public_ports_visitor_not_answered_yet_is_told_why() -> None:
    sent, task = await _run("http", _forever(None), grant=stream_revocation.Grant("public", SB, epoch=8000))
    await asyncio.wait_for(task, 5)
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["message"] == "port 8000 is no longer public"


async def test_another_cancel_is_not_taken_for_a_revocation() -> None:
    sent, task = await _run("http", _forever(None), revoke=False)
    task.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == [] and not stream_revocation._watched
