"""Session 32's attack on gVisor's ``/tmp``, from inside a 128 MiB sandbox as ``nobody``: fill
everything writable, ``/tmp`` far past the memory limit, then be paused.

runsc mounts a tmpfs of its own at ``/tmp`` when no mount names it, with no size: its files are
the Sentry's memory, charged to the host cgroup (the tenant's limit plus a headroom), and the
guest's memory watch cannot free them by killing processes. A tenant's writers went on to the
host cgroup's limit, where the sandbox was lost: ended by the kernel, or at its next checkpoint
(the pause of a gVisor sandbox to disk, test_attack_session31_gvisor_wall_pause.py). Now the
bundle names a sized tmpfs at ``/tmp`` (agent/sandbox_fs.py, ``gvisor_tmp_mb``): it takes a
share of the budget the disk has of the memory limit, so both full leave the host cgroup its
headroom, the sandbox pauses and resumes with its files, and its tenant can still run a command.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.security.test_attack_session8_memwatch import cgroup, sh
from tests.security.test_attack_session16_gvisor import HOST_LIMIT, MEMORY_MB
from warren.agent.sandbox_fs import gvisor_tmp_mb
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MIB = 1 << 20
WRITERS = 8  # at once, each asking for half the tenant's limit: 4 times the limit in all
EACH_MB = MEMORY_MB // 2
TMP_MB = gvisor_tmp_mb(MEMORY_MB)  # 16 MiB here
# The host cgroup with the disk and /tmp full: well under its limit, with room for a checkpoint
# (session 32, /tmp then 16 MiB: 124 MiB of 224: the Sentry ~25, the disk 78, /tmp 17).
ROOM = 64 * MIB
ENOSPC = "No space left on device"
FILL = (
    "dd if=/dev/zero of=/var/tmp/disk bs=1M count=512 2>&1 | grep -c 'No space'; "
    + "".join(f"dd if=/dev/zero of=/tmp/w{i} bs=1M count={EACH_MB} 2>&1 & " for i in range(WRITERS))
    + "wait"
)
TOTAL = "cat /tmp/w* | wc -c; test -s /var/tmp/disk && echo disk-kept"


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their cgroups and answers.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


def peak(sandbox_id: str) -> int:
    return int((cgroup(sandbox_id) / "memory.max_usage_in_bytes").read_text())


def test_tmp_ends_at_its_size_and_the_sandbox_pauses_with_its_files(agent: AgentProcess) -> None:
    sandbox = agent.create(memory_mb=MEMORY_MB, runtime="gvisor").sandbox_id
    try:
        filled = sh(agent, sandbox, FILL, timeout=60)
        out = filled.stdout.decode()
        # The disk and every writer end at their size, not at the host's limit (nor killed).
        assert out.split("\n", 1)[0].strip() == "1", out
        assert out.count(ENOSPC) == WRITERS, out
        written = sh(agent, sandbox, TOTAL)
        total = int(written.stdout.split()[0])
        assert (TMP_MB - 1) * MIB <= total <= TMP_MB * MIB, total
        assert peak(sandbox) <= HOST_LIMIT - ROOM, peak(sandbox)
        paused = agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sandbox), timeout=45)
        assert paused.paused_state == "disk"
        agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sandbox, timeout_sec=-1), timeout=45)
        after = sh(agent, sandbox, TOTAL)
        assert after.stdout.split() == [str(total).encode(), b"disk-kept"], after
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sandbox), timeout=120)
    assert not cgroup(sandbox).exists()
