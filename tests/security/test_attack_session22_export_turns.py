"""Session 22: an agent's export turns were first come, first served between teams.

An agent turns at most 2 sandboxes' writable layers into layer tars at once (snapshots'
``ExportSnapshot`` and build steps, agent/layer_cache.py ``EXPORTS_AT_ONCE``): each walks the
tenant's files, seconds for tens of thousands of them. The rest waited in the order they came, so
a team snapshotting several sandboxes full of small files (each within its quotas) held every
other team's snapshot on that host behind all of its exports: tenant B's snapshot of a sandbox
with one file waited for A's queued exports too, not just for the two running.

Written as the control plane calls the agent for two teams (``owner_team_id``, then
``PauseSandbox`` and ``ExportSnapshot`` as a snapshot does): tenant A's four exports of
sandboxes with ~25 000 files each are running or waiting, then tenant B's export of a sandbox
with one file. Before: B's export was done after three of A's. Now a free export turn goes to
the waiting team holding the fewest (warren/fair_turns.py): B's is done after at most the two
that were running when it asked.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

A_EXPORTS = 4
MANY_FILES = (
    "import os\n"
    "for d in range(50):\n"
    "    os.mkdir(f'/home/d{d}')\n"
    "    for i in range(500):\n"
    "        open(f'/home/d{d}/f{i}', 'w').close()\n"
)


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their cgroups and answers.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


class Export:
    """An ExportSnapshot call; ``exported`` is set at its first chunk (the layer's tar is
    written: the export's turn is over, its install follows)."""

    def __init__(self, agent: AgentProcess, sandbox_id: str, order: list[str], lock: threading.Lock) -> None:
        self.sid = sandbox_id
        self.exported = threading.Event()
        self.error: BaseException | None = None
        self._call = agent.stub.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=sandbox_id), timeout=300)
        self._order, self._lock = order, lock
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for _ in self._call:
                if not self.exported.is_set():
                    with self._lock:
                        self._order.append(self.sid)
                    self.exported.set()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = e
        finally:
            self.exported.set()

    def cancel(self) -> None:
        self._call.cancel()


def test_one_teams_exports_do_not_hold_another_teams_snapshot_behind_them(agent: AgentProcess) -> None:
    team_a, team_b = str(uuid.uuid4()), str(uuid.uuid4())
    a_ids = [agent.create(memory_mb=512, owner_team_id=team_a).sandbox_id for _ in range(A_EXPORTS)]
    b_id = agent.create(memory_mb=512, owner_team_id=team_b).sandbox_id
    exports: list[Export] = []
    order: list[str] = []
    lock = threading.Lock()
    try:
        for sid in a_ids:
            assert agent.py(sid, MANY_FILES).exit_code == 0
        assert agent.exec(b_id, "/bin/sh", "-c", "echo hello > /home/one").exit_code == 0
        for sid in [*a_ids, b_id]:
            agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sid), timeout=120)
        exports += [Export(agent, sid, order, lock) for sid in a_ids]
        time.sleep(1.0)  # A's four asked: two exporting, two waiting for a turn
        with lock:
            before = len(order)
        assert before == 0, f"A's exports were done too soon to be waiting: {order}"
        b = Export(agent, b_id, order, lock)
        exports.append(b)
        for e in exports:
            assert e.exported.wait(240), "an export never finished"
            assert e.error is None, e.error
    finally:
        for e in exports:
            e.cancel()
        for sid in [*a_ids, b_id]:
            with contextlib.suppress(grpc.RpcError):
                agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)
    b_place = order.index(b_id)
    print(f"exports done in order: B's was number {b_place + 1} of {len(order)}")
    # Before: B's waited for A's two queued exports to get turns, done after three of A's.
    assert b_place <= 2, f"B's export was done after {b_place} of A's {A_EXPORTS}: {order}"
