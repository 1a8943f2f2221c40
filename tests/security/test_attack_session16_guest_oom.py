"""Session 16: a sandbox's ``nobody`` makes the guest (PID 1) its sandbox's OOM victim.

The guest starts every command at ``oom_score_adj`` 1000 and keeps its own at 0, so that the
memory cgroup's OOM killer takes a tenant process first (session 15). But a process may lower its
own score down to ``oom_score_adj_min``, a floor only a writer with CAP_SYS_RESOURCE (host root)
sets, and every process inherits at fork. The runtime's write had set the guest's floor at 0,
so any tenant process, ``nobody`` included, could write 0 to its own ``/proc/self/oom_score_adj``:
then, with the memory held by processes each smaller than the guest (~9 MiB), the guest was the
largest at 0 and died, and the sandbox with it ("its container exited"). Before the fix, runc
and crun: the floor 0 for root and nobody, the guest killed at the first command (2 runs each;
the kernel's log naming the guest, ``oom_score_adj:0``). Fixed: the agent sets the guest's floor
at 1000 under its own 0 (``agent/runtime/guest_oom.py``). That takes CAP_SYS_RESOURCE: on a
machine whose root lacks it (the reference test machines, a container) the floor test is
skipped and the agent logs event=guest_oom_floor_unavailable. Since session 17 the guest
survives there too: every command runs in the ``cmds`` cgroup below the sandbox's, which holds
the guest alone (``agent/runtime/cmds_cgroup.py``), so the OOM killer chooses among the tenant's
processes whatever their score (test_attack_session17_guest_cgroup.py).

As the attacker runs it: a script in a 128 MiB sandbox (runc and crun) that turns ``nobody``
and fills the sandbox with small processes at the lowest score it can get; then commands.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from tests.security.oom_storm import STORM_EXIT_CODES
from warren.agent.runtime import guest_oom
from warren.rpc import hostagent_pb2 as pb

# The floor takes CAP_SYS_RESOURCE, which a host's root has; a machine whose root lacks it (a
# container without it, as the reference test machines) cannot hold the floor at all, and the
# agent says so at its first create (event=guest_oom_floor_unavailable).
pytestmark = pytest.mark.root
needs_the_cap = pytest.mark.skipif(not guest_oom.able(), reason="this machine's root has no CAP_SYS_RESOURCE")

# Run as nobody (the guest execs it as that user): the lowest score the kernel allows, then
# ``sleep``s forked until the cgroup refuses (memory or pids), retried forever; restarted when
# the OOM killer takes it.
FILL = r"""
import os, time
for score in (b"-1000", b"-1", b"0", b"999"):
    try:
        with open("/proc/self/oom_score_adj", "wb", buffering=0) as f:
            f.write(score)
        break
    except OSError:
        pass
while True:
    try:
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "300"])
    except OSError:
        time.sleep(0.05)
"""
# The lowest score a tenant process may give itself.
FLOOR = r"""
for score in (b"-1000", b"-1", b"0", b"999", b"1000"):
    try:
        with open("/proc/self/oom_score_adj", "wb", buffering=0) as f:
            f.write(score)
        print(int(score))
        break
    except OSError:
        pass
"""
COMMANDS = 20


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with scratch_agent(f"attack16-guest-oom-{request.param}", runtime=request.param) as a:
        yield a


@pytest.fixture
def sandbox(agent: AgentProcess) -> Iterator[str]:
    sb = agent.create(memory_mb=128).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):  # a dead guest's sandbox is gone already
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def sh(agent: AgentProcess, sb: str, script: str, user: str = "") -> str:
    res = agent.exec(sb, "sh", "-c", script, timeout_sec=30, user=user)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    return res.stdout.decode()


@needs_the_cap
def test_no_tenant_process_gets_below_1000(agent: AgentProcess, sandbox: str) -> None:
    floor = f"python3 -c {shlex.quote(FLOOR)}"
    got = {name: sh(agent, sandbox, floor, user) for name, user in (("nobody", "nobody"), ("root", ""))}
    assert got == {"nobody": "1000\n", "root": "1000\n"}, got
    # The guest's own score stays below every tenant process's.
    assert sh(agent, sandbox, "cat /proc/1/oom_score_adj") == "0\n"


def test_nobody_at_its_lowest_score_cannot_make_the_guest_the_victim(
    agent: AgentProcess, sandbox: str
) -> None:
    fill = f"(while :; do python3 -c {shlex.quote(FILL)}; done) >/dev/null 2>&1 &"
    sh(agent, sandbox, fill, "nobody")
    # The fillers reach the limit within a second or two; the guest must outlive this.
    time.sleep(5)
    alive = 0
    for i in range(COMMANDS):
        try:
            res = agent.exec(sandbox, "true", timeout_sec=30)
        except grpc.RpcError as e:
            # FAILED_PRECONDITION "its container exited": the guest was the OOM killer's victim.
            pytest.fail(f"command {i}: {e.code()}: {e.details()}")  # type: ignore[attr-defined]
        assert res.exit_code in STORM_EXIT_CODES, (i, res)  # a command may be a victim itself
        if res.exit_code == 0:
            alive += 1
    assert alive > 0, "every command was killed"


@pytest.mark.skipif(guest_oom.able(), reason="this machine's root holds CAP_SYS_RESOURCE")
def test_an_agent_that_cannot_hold_the_floor_says_so(agent: AgentProcess, sandbox: str) -> None:
    assert "event=guest_oom_floor_unavailable" in agent.log_path.read_text()
