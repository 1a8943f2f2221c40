"""A CP↔agent partition longer than the 90 s heartbeat staleness, under a mixed load.

One in-process control plane listens on 127.0.0.1 and also on 127.0.0.83, the partitioned
agent's own address, and that agent (C) reaches the CP there: one iptables rule dropping every
packet *to* 127.0.0.83 then cuts both directions (the CP's RPCs to C, C's heartbeats to the
CP), and nothing else. Agents A and B (127.0.0.81-82) reach the CP on 127.0.0.1.

The staleness is not waited for: the CP's clock (``warren.clock``, the one every time rule
reads; in process, so the test moves it) goes past it, A and B heartbeat on the moved clock,
and one monitor pass marks C down and its sandboxes ``missing``. Meanwhile the load runs on A
and B, and calls on C's sandboxes get definite answers. Healed, C heartbeats again and one pass
brings its sandboxes back ``running``, files intact.

``serial``: it adds an iptables rule (its own, for one address nobody else uses, but rules
are the machine's).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from tests.faults import invariants as inv
from tests.harness.agent import AgentProcess
from tests.harness.cp import START_TIMEOUT_S, InProcessCP
from tests.harness.machine import scratch_dir
from tests.harness.multihost import fleet, wait_for
from warren import clock, ids
from warren.cp.hosts.monitor import HostMonitor

pytestmark = [
    pytest.mark.root,
    pytest.mark.serial,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents and iptables need root"),
    pytest.mark.timeout(300),
]

IPS = ("127.0.0.81", "127.0.0.82")
CUT = "127.0.0.83"
RULE = ["OUTPUT", "-d", CUT, "-m", "comment", "--comment", "warren-fault-partition", "-j", "DROP"]


class TwoAddressCP(InProcessCP):
    """The in-process CP, served on 127.0.0.1 and on ``CUT`` (same port)."""

    def __init__(self, db_url: str, home: Path, **overrides: Any) -> None:
        super().__init__(db_url, home, **overrides)
        self.cut_url = f"http://{CUT}:{self.port}"
        self._sockets = [self._bound("127.0.0.1"), self._bound(CUT)]

    def _bound(self, ip: str) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, self.port))
        return s

    async def start(self) -> Self:
        self._task = asyncio.create_task(self.server.serve(sockets=self._sockets))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if self._task.done():
                self._task.result()
            assert time.monotonic() < deadline, "control plane did not start"
            await asyncio.sleep(0.05)
        return self


@dataclass
class Cut:
    cp: TwoAddressCP
    key: str
    agents: list[AgentProcess]  # A, B, C

    @property
    def monitor(self) -> HostMonitor:
        monitor: HostMonitor = self.cp.app.state.monitor
        return monitor

    async def host_status(self, agent: AgentProcess) -> str:
        return str((await self.cp.sql("SELECT status FROM hosts WHERE id = :h", h=agent.host_uuid))[0][0])

    async def beaten_since(self, agents: list[AgentProcess], since: Any) -> None:
        async def ok() -> bool:
            for a in agents:
                rows = await self.cp.sql("SELECT last_heartbeat_at FROM hosts WHERE id = :h", h=a.host_uuid)
                if rows[0][0] is None or rows[0][0] < since:
                    return False
            return True

        await wait_for(ok, 60, "fresh heartbeats")


def iptables(op: str) -> None:
    subprocess.run(["iptables", op, *RULE], check=op != "-D", capture_output=True)


@pytest.fixture(scope="module")
async def cut(db_url: str) -> AsyncIterator[Cut]:
    home = scratch_dir("faults-partition")
    cp = await TwoAddressCP(db_url, home).start()
    try:
        admin = await cp.signup(admin=True)
        key = await (await cp.signup()).api_key()
        async with fleet(cp, "faults-partition") as f:

            async def add_cut() -> AgentProcess:
                _, token = await admin.create_host()
                agent = AgentProcess.registered(CUT, f.root / CUT, cp.cut_url)
                await agent.astart(token)
                f.agents.append(agent)
                return agent

            await asyncio.gather(*(f.add(admin, ip, name=ip) for ip in IPS), add_cut())
            f.agents.sort(key=lambda a: a.ip)
            yield Cut(cp, key, f.agents)
    finally:
        iptables("-D")
        await cp.stop()
        clock.reset()
        shutil.rmtree(home, ignore_errors=True)


async def test_partition_past_staleness(cut: Cut) -> None:
    a, b, c = cut.agents
    load = inv.Load(cut.cp.http, cut.key)
    kept = await load.run(workers=3, rounds=2)
    host_of = {ids.sandbox_id(r[0]): r[1] for r in await cut.cp.sql("SELECT id, host_id FROM sandboxes")}
    on_c = [sb for sb in kept if host_of[sb] == c.host_uuid]
    while not on_c:  # round robin: C's turn comes within three creates
        sb = await load.create()
        if sb is not None and await _host_of(cut, sb) == c.host_uuid:
            await load.write(sb)
            on_c.append(sb)
    iptables("-I")
    try:
        clock.advance(cut.cp.settings.heartbeat_stale_s + 5)
        await cut.beaten_since([a, b], clock.now())
        await cut.monitor.run_once()
        assert await cut.host_status(c) == "unreachable"
        # Meanwhile: the load on A and B; C's sandboxes answer at once (they are `missing`).
        await load.run(workers=3, rounds=1)
        for sb in on_c:
            await load.exec(sb)
        for ans in load.answers[-len(on_c) :]:
            assert ans.status == 409, ans
    finally:
        iptables("-D")
    await wait_for(lambda: _online(cut, c), 30, "C online again")
    await inv.reachable(cut.cp.pool, cut.agents)
    await cut.monitor.run_once()
    await inv.all_hold(cut.cp.sql, cut.cp.pool, cut.agents, load)
    for sb in on_c:
        rows = await cut.cp.sql(
            "SELECT status FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, sb)
        )
        assert rows[0][0] == "running"


async def _host_of(cut: Cut, sb: str) -> Any:
    rows = await cut.cp.sql(
        "SELECT host_id FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, sb)
    )
    return rows[0][0]


async def _online(cut: Cut, agent: AgentProcess) -> bool:
    return await cut.host_status(agent) == "online"
