"""Session 22: the agent's per-team shares were keyed by the sandbox's template's team.

An agent bounds the bytes of grown file transfer windows (session 14's ``ReadFileCredit`` /
``WriteFileCredit``, rpc/flow_window.py) at 64 MiB in all and 16 MiB per team, so that one team
cannot take the whole budget while another transfers (session 16). The team was the sandbox
record's ``team_id``: the team of its *template*, the all-zero team for every sandbox of the
built-in ``minimal``, whoever owns it. So one tenant's downloads from its ``minimal`` sandboxes
took the share of every tenant on that template: another team's download could not grow past
768 KiB, on a budget 3/4 unused. (The socket watchdog's workers were shared the same way:
test_attack_session22_watchdog_share.py.)

Written as the control plane calls the agent on each tenant's behalf (what a tenant's fast
downloads make it ask: windows granted up to the agent's largest, 8 MiB): two of tenant A's
downloads, then one of tenant B's, from ``minimal`` sandboxes. Now the CP names each sandbox's
owner (``CreateSandboxRequest.owner_team_id``) and the agent shares by it
(``HostSandbox.tenant``): B's window grows to 8 MiB, and A's third still stops at its share.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren.rpc import hostagent_pb2 as pb
from warren.rpc.flow_window import BASE, GRAIN

pytestmark = pytest.mark.root

MiB = 1 << 20
LARGEST = 8 * MiB  # the agent's largest window (AgentSettings.transfer_window_max)
TEAM_SHARE = 16 * MiB  # its per-team share of grown windows (transfer_window_team_mb)
FILE = "/tmp/big"
SETTLE_S = 1.5  # no byte for this long: the agent is waiting for an acknowledgement


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-s22-shares") as a:
        yield a


class Download:
    """A ReadFileCredit call that grants the largest window once and never acknowledges: what
    it receives is the window the agent keeps to."""

    def __init__(self, agent: AgentProcess, sandbox_id: str) -> None:
        self._requests: queue.Queue[pb.ReadFileCreditRequest | None] = queue.Queue()
        opening = pb.ReadFileRequest(sandbox_id=sandbox_id, path=FILE)
        self._requests.put(pb.ReadFileCreditRequest(open=opening))
        self._requests.put(pb.ReadFileCreditRequest(acked=0, window=LARGEST))
        self._call = agent.stub.ReadFileCredit(iter(self._requests.get, None), timeout=300)
        self.received, self._last = 0, time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for msg in self._call:
                self.received += len(msg.chunk)
                self._last = time.monotonic()
        except Exception:  # cancelled at the end
            return

    def settled(self) -> int:
        """The bytes received once none has come for SETTLE_S."""
        deadline = time.monotonic() + 60
        while time.monotonic() - self._last < SETTLE_S or not self.received:
            assert time.monotonic() < deadline, "the download never settled"
            time.sleep(0.1)
        return self.received

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


def test_one_teams_downloads_leave_another_teams_share_on_the_same_template(agent: AgentProcess) -> None:
    team_a, team_b = str(uuid.uuid4()), str(uuid.uuid4())
    sandboxes = {
        name: agent.create(memory_mb=256, owner_team_id=team).sandbox_id
        for name, team in [("a1", team_a), ("a2", team_a), ("a3", team_a), ("b", team_b)]
    }  # every one of the built-in template: the same template team (all zeros)
    for sid in sandboxes.values():
        assert agent.exec(sid, "/bin/sh", "-c", f"head -c 24M /dev/zero > {FILE}").exit_code == 0
    downloads: list[Download] = []
    try:
        a = [Download(agent, sandboxes[n]) for n in ("a1", "a2")]
        downloads += a
        a_held = [d.settled() for d in a]
        b = Download(agent, sandboxes["b"])
        downloads.append(b)
        b_got = b.settled()
        a3 = Download(agent, sandboxes["a3"])
        downloads.append(a3)
        a3_got = a3.settled()
    finally:
        for d in downloads:
            d.close()
        for sid in sandboxes.values():
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)
    a_mib = [n / MiB for n in a_held]
    print(f"A's two windows {a_mib} MiB; B's {b_got / MiB:.2f}; A's third {a3_got / MiB:.2f}")
    assert all(n >= LARGEST - BASE for n in a_held), a_held  # A's first two did grow
    assert b_got >= LARGEST - BASE, f"B's window stopped at {b_got / MiB:.2f} MiB: A's share was B's"
    left = max(0, TEAM_SHARE - sum(n - BASE for n in a_held))  # of A's share, after two
    assert a3_got <= BASE + left + GRAIN, f"A's third window: {a3_got / MiB:.2f} MiB"  # A's share holds
