"""The agent's turns for layer installs (agent/layer_slots.py) over its real ``PutLayer``: an
install waits for a slot before its first chunk is read, says so in the call's initial metadata
once admitted, the queue refuses past a team's share (``install_queue_full``, which the CP
retries), and a freed slot goes to the other team first."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.machine import scratch_dir
from tests.integration.agent.layer_tars import CHUNK, digest, layer_tar
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

ADMITTED = "warren-layer-admitted"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    root = scratch_dir("layer-install-turns")
    env = {"WARREN_AGENT_LAYER_INSTALLS_AT_ONCE": "1", "WARREN_AGENT_LAYER_INSTALL_QUEUE": "2"}
    a = AgentProcess.standalone(root / "agent", env=env).start()
    try:
        yield a
    finally:
        a.stop()
        shutil.rmtree(root, ignore_errors=True)


class Push:
    """A PutLayer whose chunks the test lets go: meta first, the rest once ``go`` is set."""

    def __init__(self, a: AgentProcess, team: str, seed: str, account: str = "") -> None:
        self.data = layer_tar({f"f-{seed}": seed.encode() * 1000})
        self.digest = digest(self.data)
        self.go = threading.Event()
        self.sent = 0
        meta = pb.LayerMeta(digest=self.digest, size=len(self.data), team_id=team, owner_account_id=account)
        self.call: Any = a.stub.PutLayer.future(self._requests(meta), timeout=120)

    def _requests(self, meta: pb.LayerMeta) -> Iterator[pb.PutLayerRequest]:
        yield pb.PutLayerRequest(meta=meta)
        self.go.wait(120)
        for i in range(0, len(self.data), CHUNK):
            self.sent += 1
            yield pb.PutLayerRequest(chunk=self.data[i : i + CHUNK])

    def admitted(self) -> bool:
        return ADMITTED in dict(self.call.initial_metadata())


def queued(a: AgentProcess, n: int) -> None:
    """Until the agent has logged ``n`` queued installs (60 s at most)."""
    deadline = time.monotonic() + 60
    while a.log_path.read_text(errors="replace").count("event=layer_install_queued") < n:
        assert time.monotonic() < deadline, a.log_tail()
        time.sleep(0.05)


def test_turns_over_put_layer(agent: AgentProcess) -> None:
    has = agent.stub.HasLayers(pb.HasLayersRequest(digests=[]), timeout=30)
    assert has.admits  # what the CP looks for before it waits for the agent's word
    before = agent.log_path.read_text(errors="replace").count("event=layer_install_queued")
    first = Push(agent, "team-a", "a1")
    assert first.admitted()  # the one slot: admitted before a chunk was sent
    assert first.sent == 0
    a2 = Push(agent, "team-a", "a2")
    queued(agent, before + 1)
    b1 = Push(agent, "team-b", "b1")
    queued(agent, before + 2)
    # team-a's share of the queue (1 of 2) is taken: a third is refused, to be retried
    a3 = Push(agent, "team-a", "a3")
    with pytest.raises(grpc.RpcError) as refused:
        a3.call.result()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details().startswith("install_queue_full")

    first.go.set()
    assert first.call.result().installed
    # the freed slot goes to team-b (holding none, served never), though team-a's came first
    assert b1.admitted()
    b1.go.set()
    assert b1.call.result().installed
    assert a2.admitted()
    a2.go.set()
    assert a2.call.result().installed
    assert not agent.stub.HasLayers(
        pb.HasLayersRequest(digests=[first.digest, a2.digest, b1.digest]), timeout=30
    ).missing


def test_one_accounts_teams_take_one_share_of_the_queue(agent: AgentProcess) -> None:
    """A user may own several teams: each took a share of the install queue of its own, so an
    account's third team filled the queue and another tenant's install was refused (session 23).
    Named by their owning account (``LayerMeta.owner_account_id``), they share one."""
    before = agent.log_path.read_text(errors="replace").count("event=layer_install_queued")
    held = Push(agent, "x-team-1", "x1", account="account-x")
    assert held.admitted()  # the one slot
    x2 = Push(agent, "x-team-2", "x2", account="account-x")
    queued(agent, before + 1)  # account-x's share of the queue (1 of 2)
    x3 = Push(agent, "x-team-3", "x3", account="account-x")
    with pytest.raises(grpc.RpcError) as refused:
        x3.call.result()  # before: its team held none, and it took the queue's last place
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    b = Push(agent, "b-team", "b", account="account-b")
    queued(agent, before + 2)  # the other tenant's install waits for its turn, not refused
    held.go.set()
    assert held.call.result().installed
    assert b.admitted()  # the freed slot: the tenant holding none
    b.go.set()
    assert b.call.result().installed
    x2.go.set()
    assert x2.call.result().installed
