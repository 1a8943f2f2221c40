"""Session 22: an agent's create turns were first come, first served between teams.

An agent builds at most ``WARREN_AGENT_CREATE_CONCURRENCY`` sandboxes at once (2 per CPU by
default) and queued the rest in the order they came (agent/admission.py). A team's burst of
creates, each within its quota (20 sandboxes a team, and an owner has up to 10 teams), so held
every later create of every other team on that host behind the whole burst: tenant B, within
every one of its limits, waited for all of A's sandboxes to be built before its own was begun.

Written as the control plane calls the agent for two teams (``owner_team_id``, the requesting
team), on an agent building one sandbox at a time: tenant A's 20 creates (its quota) are received and
waiting, then tenant B's one. Before: B's sandbox was the last of the 21 made. Now a free
turn goes to the waiting create whose team holds the fewest turns: B's is begun once the create
being built ends, and made before most of A's.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren import ids
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

A_CREATES = 20  # a team's default sandbox quota


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-s22-create-turns", env={"WARREN_AGENT_CREATE_CONCURRENCY": "1"}) as a:
        yield a


def _creating(agent: AgentProcess) -> set[str]:
    return set(agent.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=30).creating_sandbox_ids)


def test_one_teams_burst_of_creates_does_not_hold_another_teams_create_behind_it(agent: AgentProcess) -> None:
    agent.stub.DestroySandbox(
        pb.DestroySandboxRequest(sandbox_id=agent.create(memory_mb=128).sandbox_id), timeout=120
    )  # the minimal template ready: every create below is the agent's own work only
    team_a, team_b = str(uuid.uuid4()), str(uuid.uuid4())
    done: list[str] = []
    lock = threading.Lock()
    calls: list[grpc.Future] = []

    def send(sid: str, team: str) -> None:
        req = pb.CreateSandboxRequest(sandbox_id=sid, memory_mb=128, owner_team_id=team)
        call = agent.stub.CreateSandbox.future(req, timeout=300)

        def finished(_: object, sid: str = sid) -> None:
            with lock:
                done.append(sid)

        call.add_done_callback(finished)
        calls.append(call)

    a_ids = [ids.sandbox_id(ids.new_uuid()) for _ in range(A_CREATES)]
    b_id = ids.sandbox_id(ids.new_uuid())
    try:
        for sid in a_ids:
            send(sid, team_a)
        deadline = time.monotonic() + 60
        while not set(a_ids) <= _creating(agent) | set(done):
            assert time.monotonic() < deadline, "the agent never had A's creates in flight"
            time.sleep(0.05)
        with lock:
            before = len(done)  # A's made before B asked
        assert before <= A_CREATES - 6, f"A's creates ended too soon to be queued: {done}"
        send(b_id, team_b)
        for call in calls:
            call.result()  # each made (raises on an error)
    finally:
        for sid in [*a_ids, b_id]:
            with contextlib.suppress(grpc.RpcError):
                agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)
    b_place = done.index(b_id)
    print(f"B's create: number {b_place + 1} of {len(done)} made; {before} of A's made before it asked")
    # Before: B's was the last; with fair turns it follows the create being built when it came
    # (and at most two more: A's answers reach this process after the agent is done with them,
    # and B's request the agent after it was sent).
    assert b_place <= before + 3, f"B's create waited for {b_place - before} of A's creates: {done}"
