"""`warren up`'s local agent on its first start, when the port picked for it is taken before the
agent listens (another process on the machine binds it in between: CI's parallel tests did,
session 34). The agent says so before it spends its one-time token (exit 75, after its
message), and `warren up` picks another port and starts it again with the same token."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import tether
from tests.harness.agent import NO_METRICS_PORT
from tests.harness.cp import InProcessCP
from tests.harness.machine import minimal_cache_env, scratch_dir
from warren.cli import local_agent
from warren.cli.local_agent import LocalAgentChild
from warren.cli.supervisor import Supervisor

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root"),
    pytest.mark.timeout(300),
]


@pytest.fixture
def home() -> Iterator[Path]:
    d = scratch_dir("local-agent-port")
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_a_port_taken_before_the_agent_listens_is_picked_again(
    cp: InProcessCP, db_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks: list[int] = []
    pick = local_agent._pick_port

    def first_taken(preferred: int) -> int:  # the race, made every time: free when picked, then not
        picks.append(preferred)
        return taken if len(picks) == 1 else pick(preferred)

    monkeypatch.setattr(local_agent, "_pick_port", first_taken)
    env = {**os.environ, **minimal_cache_env(), **NO_METRICS_PORT, **tether.agent_env()}
    child = LocalAgentChild(home, cp.url, db_url, env, ready_timeout=120)
    try:
        await asyncio.to_thread(child.start, Supervisor())
        listen = (home / "agent" / "listen-address").read_text().strip()
        assert listen != f"127.0.0.1:{taken}" and len(picks) == 2, (listen, picks)
        rows = await cp.sql("SELECT status FROM hosts WHERE address = :a", a=listen)
        assert [tuple(r) for r in rows] == [("online",)], rows  # registered, with the first token
    finally:
        await asyncio.to_thread(child.stop)
        squatter.close()
