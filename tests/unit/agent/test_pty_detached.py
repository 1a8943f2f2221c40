"""A terminal client the guest detached (it closed that connection, its container alive) is told
so: ``ABORTED`` from the agent, ``{"code": "detached", "status": 409}`` from the CP; a guest
connection broken otherwise stays ``unavailable`` (session 28)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from warren.agent.guest_wire import HDR, K_EVENT, GuestError, Lifeline, jdump
from warren.agent.pty_rpc import DETACHED, PtyEvent, PtySession, _event
from warren.agent.rpc_errors import status_for
from warren.cp.services.exec_stream import detach_reporter
from warren.cp.services.pty import PtyPeer
from warren.cp.ws import error_frame
from warren.errors import AgentError


async def _guest_that_detaches(path: Path) -> asyncio.Server:
    """A stand-in guest: answers a terminal's start, then closes the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hdr = await reader.readexactly(HDR)
        await reader.readexactly(int.from_bytes(hdr[:4], "big"))
        start = jdump({"type": "start", "pid": 7})
        writer.write(len(start).to_bytes(4, "big") + bytes((K_EVENT,)) + start)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


@pytest.mark.parametrize("answers", [True, False])
async def test_a_connection_closed_by_a_guest_that_answers_is_a_detach(tmp_path: Path, answers: bool) -> None:
    sock = tmp_path / "guest.sock"
    server = await _guest_that_detaches(sock)

    async def alive() -> bool:
        return answers

    try:
        s = await PtySession.open(str(sock), {"op": "pty_connect", "pid": 7}, None, alive)
        assert s.pid == 7
        ev = await anext(s)
        # A guest that no longer answers (a sandbox killed, stopping) broke it: an error.
        assert ev.kind == ("detached" if answers else "error"), ev
    finally:
        server.close()


async def _never_asked() -> bool:
    raise AssertionError("a dead container's NOT_RUNNING needs no question")


async def test_a_guest_that_died_is_not_a_detach(tmp_path: Path) -> None:
    sock = tmp_path / "guest.sock"
    server = await _guest_that_detaches(sock)
    try:
        lifeline = Lifeline()
        s = await PtySession.open(str(sock), {"op": "pty_connect", "pid": 7}, lifeline, _never_asked)
        lifeline.end("sandbox sb-x is not running")
        with pytest.raises(GuestError) as e:
            await anext(s)
        assert e.value.kind == "not_running"
    finally:
        server.close()


def test_detached_is_aborted_with_its_reason_and_the_rest_unavailable() -> None:
    with pytest.raises(GuestError) as e:
        _event(PtyEvent("detached", error="guest closed the connection mid-response"), [])
    assert status_for(e.value) == (grpc.StatusCode.ABORTED, DETACHED)
    with pytest.raises(GuestError) as e:
        _event(PtyEvent("error", error="guest connection lost"), [])
    assert status_for(e.value)[0] == grpc.StatusCode.UNAVAILABLE


async def test_the_cp_reports_aborted_as_detached_not_as_the_host() -> None:
    sent: list[dict[str, Any]] = []

    async def send_json(frame: dict[str, Any]) -> None:
        sent.append(frame)

    async def unused(*_: Any) -> Any:
        raise AssertionError("not used")

    peer = PtyPeer(recv=unused, send_bytes=unused, send_json=send_json, error_frame=error_frame)
    report = detach_reporter(peer.error)
    await report(AgentError(DETACHED, rpc_code="ABORTED"))
    await report(AgentError("host agent unreachable: x", rpc_code="UNAVAILABLE"))
    assert [(f["code"], f["status"]) for f in sent] == [("detached", 409), ("agent_error", 502)]
    assert sent[0]["message"] == DETACHED
