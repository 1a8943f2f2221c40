"""File transfers' growing flow window (session 14; cp/services/file_transfer.py, the agent's
agent/exec_credit.py, the rule in rpc/flow_window.py), over a link with a real round trip: the
CP's transfer code in this process, a real standalone agent and sandbox, and between them a TCP
relay that delays every chunk (tests/harness/delay_relay.py: 10 ms round trip). What is asserted
is the window each transfer reached (its ``event=file_window`` line), never a rate."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.delay_relay import spawn
from tests.harness.machine import scratch_dir
from tests.integration.agent.conftest import require_root
from warren.cp.hosts.agent_client import agent_errors
from warren.cp.hosts.client_pool import HostClient
from warren.cp.services import file_transfer
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc
from warren.rpc.flow_window import BASE, Budget

MIB = 1 << 20
SIZE = 32 * MIB
RTT_MS = 10
LINE = re.compile(r"event=file_window direction=(\w+) sandbox=(\S+) peak=(\d+) sender=(\d+) capped=(\d+)")


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    require_root()
    root = scratch_dir("window")
    # Its team share as large as its budget: the CP's budget is what these tests exercise (every
    # standalone sandbox is of one team).
    a = AgentProcess.standalone(root / "agent", env={"WARREN_AGENT_TRANSFER_WINDOW_TEAM_MB": "64"}).start()
    try:
        yield a
    finally:
        a.finish()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(agent: AgentProcess) -> str:
    sid = agent.create(memory_mb=512).sandbox_id
    out = agent.exec(sid, "/bin/sh", "-c", f"head -c {SIZE} /dev/urandom > /tmp/big", timeout_sec=120)
    assert out.exit_code == 0, out
    return sid


@pytest.fixture(scope="module")
def relay(agent: AgentProcess) -> Iterator[str]:
    with spawn(agent.address, RTT_MS) as address:
        yield address


@pytest.fixture
def budget() -> Iterator[Budget]:
    """The CP's window budget for one test (the settings' defaults: 64 MiB, 16 MiB a team)."""
    file_transfer._budget = Budget(64 * MIB, 16 * MIB)
    yield file_transfer._budget
    file_transfer._budget = None


def _client(address: str) -> HostClient:
    channel = grpc.aio.insecure_channel(address, interceptors=agent_errors("h-test"))
    return HostClient("h-test", address, channel, 0)


def _windows(caplog: pytest.LogCaptureFixture, sid: str) -> list[tuple[str, int, int, int]]:
    """(direction, peak, sender, capped) of each transfer of ``sid`` logged so far."""
    found = [LINE.search(r.getMessage()) for r in caplog.records]
    return [(m[1], int(m[3]), int(m[4]), int(m[5])) for m in found if m is not None and m[2] == sid]


async def _drain(chunks: AsyncIterator[bytes]) -> int:
    n = 0
    async for c in chunks:
        n += len(c)
    return n


async def _pieces(total: int) -> AsyncIterator[bytes]:
    data = b"x" * MIB
    for _ in range(total // MIB):
        yield data


def test_a_fast_reader_grows_its_window_over_a_delayed_link(
    relay: str, sandbox: str, budget: Budget, caplog: pytest.LogCaptureFixture
) -> None:
    """A download read as fast as it comes and an upload into a guest that takes it: the window
    doubles from 256 KiB (the budget allowing), the sender keeps to it, and it is all given back
    at the end."""
    caplog.set_level(logging.INFO, logger="warren.files")

    async def run() -> int:
        client = _client(relay)
        try:
            got = await _drain(await file_transfer.open_read(client, sandbox, "/tmp/big", "", team="t1"))
            await file_transfer.write(client, sandbox, "/tmp/up", _pieces(SIZE), "", team="t1")
            return got
        finally:
            await client.channel.close()

    assert asyncio.run(run()) == SIZE
    (down, d_peak, d_sender, _), (up, u_peak, _, _) = _windows(caplog, sandbox)
    assert (down, up) == ("download", "upload")
    assert d_peak >= 4 * MIB and d_sender == d_peak, _windows(caplog, sandbox)
    assert u_peak >= 4 * MIB, _windows(caplog, sandbox)
    assert budget.used == 0


def test_a_reader_that_takes_nothing_never_grows(
    relay: str, sandbox: str, budget: Budget, caplog: pytest.LogCaptureFixture
) -> None:
    """A download whose reader takes its first chunk and no more, and one that reads a chunk
    every 100 ms (ten round trips: the reader, not the window, holds it back): 256 KiB each."""
    caplog.set_level(logging.INFO, logger="warren.files")

    async def run() -> None:
        client = _client(relay)
        try:
            stalled = await file_transfer.open_read(client, sandbox, "/tmp/big", "", team="t1")
            await anext(stalled)
            slow = await file_transfer.open_read(client, sandbox, "/tmp/big", "", team="t1")
            n = 0
            async for chunk in slow:
                n += len(chunk)
                if n >= 2 * MIB:
                    break
                await asyncio.sleep(0.1)
            await slow.aclose()
            assert budget.used == 0
            await stalled.aclose()
        finally:
            await client.channel.close()

    asyncio.run(run())
    assert [w[:2] for w in _windows(caplog, sandbox)] == [("download", BASE), ("download", BASE)]


def test_the_budget_caps_growth_across_transfers(
    relay: str, sandbox: str, budget: Budget, caplog: pytest.LogCaptureFixture
) -> None:
    """Four downloads of one team read fast, then held unread: their grown windows together stay
    within the team's share (16 MiB), the budget cut growth short, and another team still grows
    its window from what is left of the process's budget (made 20 MiB here), no further."""
    caplog.set_level(logging.INFO, logger="warren.files")
    budget.total = 20 * MIB

    async def fast_then_held(client: HostClient, team: str, n: int) -> AsyncIterator[bytes]:
        chunks = await file_transfer.open_read(client, sandbox, "/tmp/big", "", team=team)
        got = 0
        async for chunk in chunks:
            got += len(chunk)
            if got >= n:
                break
        return chunks

    async def run() -> None:
        client = _client(relay)
        try:
            held = [await fast_then_held(client, "greedy", 24 * MIB) for _ in range(4)]
            assert budget.held("greedy") <= 16 * MIB
            other = await fast_then_held(client, "other", 24 * MIB)
            assert budget.held("other") <= 4 * MIB and budget.used <= 20 * MIB
            for chunks in (*held, other):
                await chunks.aclose()  # type: ignore[attr-defined]
            assert budget.used == 0
        finally:
            await client.channel.close()

    asyncio.run(run())
    windows = _windows(caplog, sandbox)
    assert len(windows) == 5
    greedy, other = windows[:4], windows[4]
    assert sum(peak - BASE for _, peak, _, _ in greedy) <= 16 * MIB
    assert sum(capped for *_, capped in greedy) > 0, greedy  # the share, not the reads, stopped them
    assert other[1] > BASE and other[1] - BASE <= 4 * MIB and other[3] > 0, other


def test_a_cp_from_before_keeps_the_fixed_window(relay: str, sandbox: str) -> None:
    """A caller of ReadFileCredit as session 13's CP was (no ``window`` in its acknowledgements)
    gets the whole file, and the agent never says it keeps to more than 256 KiB."""
    eof: Any = grpc.aio.EOF  # type: ignore[attr-defined]
    opening = pb.ReadFileCreditRequest(open=pb.ReadFileRequest(sandbox_id=sandbox, path="/tmp/big"))

    async def run() -> tuple[int, set[int]]:
        channel = grpc.aio.insecure_channel(relay)
        try:
            stub: Any = pb_grpc.HostAgentStub(channel)
            call = stub.ReadFileCredit()
            await call.write(opening)
            got, taken, windows = 0, 0, set()
            while (msg := await call.read()) is not eof and msg.chunk:
                got, taken = got + len(msg.chunk), taken + len(msg.chunk)
                windows.add(msg.window)
                if taken >= 32 << 10:
                    await call.write(pb.ReadFileCreditRequest(acked=taken))
                    taken = 0
            await call.done_writing()
            return got, windows
        finally:
            await channel.close()

    got, windows = asyncio.run(run())
    assert got == SIZE and windows == {0}, windows
