"""Session 23: one account's teams each took a share of the agent's per-team limits.

The agent shares what it bounds per tenant (file transfer windows' 16 MiB of a 64 MiB budget,
export and create turns, socket watchdog workers, the DNS upstream count, warm-pool members) by
the sandbox's owning team (session 22). A user may own up to 10 teams, made in a moment, and
each was a share of its own: one account with four teams held the whole transfer budget, and
another tenant's download could not grow its window at all.

Written as the control plane calls the agent on each tenant's behalf (what a tenant's fast
downloads make it ask: windows granted up to the agent's largest, 8 MiB): two downloads from a
sandbox of each of account A's four teams, then one of tenant B's. Now the CP also names the
team's owning account (``CreateSandboxRequest.owner_account_id``) and the agent shares by it
(``HostSandbox.tenant``): A's eight windows hold A's one share, and B's window grows to 8 MiB.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from tests.security.test_attack_session22_agent_shares import FILE, LARGEST, TEAM_SHARE, Download, MiB
from warren.rpc import hostagent_pb2 as pb
from warren.rpc.flow_window import BASE, GRAIN

pytestmark = pytest.mark.root

A_TEAMS = 4  # 4 teams x 2 windows x 8 MiB: the agent's whole 64 MiB budget


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-s23-account-shares") as a:
        yield a


def test_one_accounts_teams_take_one_share_of_the_transfer_windows(agent: AgentProcess) -> None:
    account_a = str(uuid.uuid4())
    owners = [(str(uuid.uuid4()), account_a) for _ in range(A_TEAMS)]
    a_ids = [
        agent.create(memory_mb=256, owner_team_id=team, owner_account_id=account).sandbox_id
        for team, account in owners
    ]
    b_id = agent.create(
        memory_mb=256, owner_team_id=str(uuid.uuid4()), owner_account_id=str(uuid.uuid4())
    ).sandbox_id
    downloads: list[Download] = []
    try:
        for sid in [*a_ids, b_id]:
            assert agent.exec(sid, "/bin/sh", "-c", f"head -c 24M /dev/zero > {FILE}").exit_code == 0
        a = [Download(agent, sid) for sid in a_ids for _ in range(2)]
        downloads += a
        a_held = [d.settled() for d in a]
        b = Download(agent, b_id)
        downloads.append(b)
        b_got = b.settled()
    finally:
        for d in downloads:
            d.close()
        for sid in [*a_ids, b_id]:
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)
    a_grown = sum(n - BASE for n in a_held)
    print(f"A's {len(a_held)} windows grew {a_grown / MiB:.2f} MiB together; B's {b_got / MiB:.2f} MiB")
    # Before: each of A's teams a share, A's eight windows took the whole budget, B's none.
    assert a_grown <= TEAM_SHARE + len(a_held) * GRAIN, f"A's teams grew {a_grown / MiB:.2f} MiB"
    assert b_got >= LARGEST - BASE, f"B's window stopped at {b_got / MiB:.2f} MiB: A's teams took it"
