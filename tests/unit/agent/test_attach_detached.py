"""An attach client the guest detached (it closed that connection, the sandbox running and its
guest answering) is told so, as a terminal's is (test_pty_detached.py): ``ABORTED`` from the
agent's AttachProcess, ``{"code": "detached", "status": 409}`` from the CP's exec stream; a guest
connection broken otherwise stays an error (session 28)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.unit.agent.test_pty_detached import _guest_that_detaches
from warren.agent.guest_wire import DETACHED_ATTACH, ExecEvent, ExecSession, GuestError, open_started
from warren.agent.rpc_errors import status_for
from warren.agent.server import HostAgentServicer
from warren.cp.services.exec_stream import Peer, detach_reporter
from warren.cp.ws import error_frame
from warren.errors import AgentError


async def _attached(sock: Path, answers: bool) -> ExecSession:
    conn, pid = await open_started(str(sock), {"op": "attach", "pid": 7})
    session = ExecSession(conn, ExecEvent(kind="start", pid=pid))

    async def alive() -> bool:
        return answers

    session.alive = alive
    return session


@pytest.mark.parametrize("answers", [True, False])
async def test_an_attach_closed_by_a_guest_that_answers_is_a_detach(tmp_path: Path, answers: bool) -> None:
    sock = tmp_path / "guest.sock"
    server = await _guest_that_detaches(sock)
    try:
        s = await _attached(sock, answers)
        assert (await anext(s)).kind == "start"
        ev = await anext(s)
        # A guest that no longer answers (a sandbox killed, stopping) broke it: an error.
        assert ev.kind == ("detached" if answers else "error"), ev
    finally:
        server.close()


class _Manager:
    @contextlib.contextmanager
    def in_use(self, sb_id: str) -> Iterator[None]:
        yield


async def test_the_relay_ends_a_detached_attach_aborted(tmp_path: Path) -> None:
    sock = tmp_path / "guest.sock"
    server = await _guest_that_detaches(sock)
    try:
        servicer = HostAgentServicer(_Manager())  # type: ignore[arg-type]
        relayed = []
        with pytest.raises(GuestError) as e:
            async for out in servicer._relay("sb-x", await _attached(sock, True)):
                relayed.append(out.WhichOneof("event"))
        assert relayed == ["start"]  # no exit -1: the process did not end
        assert status_for(e.value) == (grpc.StatusCode.ABORTED, DETACHED_ATTACH)
    finally:
        server.close()


async def test_the_cp_reports_an_aborted_attach_as_detached_not_as_the_host() -> None:
    sent: list[dict[str, Any]] = []

    async def send(frame: dict[str, Any]) -> None:
        sent.append(frame)

    async def unused() -> Any:
        raise AssertionError("not used")

    report = detach_reporter(Peer(recv=unused, send=send, error_frame=error_frame).error_quietly)
    await report(AgentError(DETACHED_ATTACH, rpc_code="ABORTED"))
    await report(AgentError("host agent unreachable: x", rpc_code="UNAVAILABLE"))
    assert [(f["code"], f["status"]) for f in sent] == [("detached", 409), ("agent_error", 502)]
    assert sent[0]["message"] == DETACHED_ATTACH
