"""Session 19: huge pages, host memory outside every memory cgroup (runc, crun).

A hugetlb page is charged to no memory cgroup on cgroup v1 (nor on v2 without
``memory_hugetlb_accounting``), and this host mounts no hugetlb controller. Where an operator
reserves huge pages for a database or a VM (``vm.nr_hugepages``), any sandbox process could take
them, as ``nobody`` and with no capability: ``mmap(MAP_HUGETLB)``, a ``memfd_create(MFD_HUGETLB)``
file, a ``shmget(SHM_HUGETLB)`` segment. With ``vm.nr_overcommit_hugepages`` set, each surplus
page is 2 MiB of the host's free memory no limit sees. Measured before the fix, with 8 pages
reserved: the anonymous mapping and the memfd each took every free page from a 64 MiB sandbox
(HugePages_Free 8 -> 0); shmget needs CAP_IPC_LOCK and was refused already.

Fixed (runtime/bundle.py ``HUGETLB_FLAGS``): the three calls with their huge-page flag are
refused with EPERM by the sandbox's seccomp filter; without it they work as before (transparent
huge pages are ordinary memory, charged as any).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

EPERM = 1
RESERVED = 8  # huge pages the "operator" reserves for the test (16 MiB)
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")

# Inside the sandbox: each way to a hugetlb page, asking for every free one and touching it.
# Prints {way: errno or 0, "free_after": HugePages_Free once all three tried} (/proc/meminfo is
# the host's under runc and crun).
TAKE = r"""
import ctypes, json, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
c = ctypes
libc.mmap.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
libc.shmat.restype = ctypes.c_void_p
def free():
    for line in open("/proc/meminfo"):
        if line.startswith("HugePages_Free:"):
            return int(line.split()[1])
size = max(1, free()) << 21
out, held = {}, []
p = libc.mmap(None, size, 3, 0x02 | 0x20 | 0x40000, -1, 0)  # PRIVATE | ANONYMOUS | HUGETLB
if p in (None, ctypes.c_void_p(-1).value):
    out["mmap"] = ctypes.get_errno()
else:
    ctypes.memset(p, 1, size)
    out["mmap"] = 0
fd = libc.memfd_create(b"huge", 0x4)  # MFD_HUGETLB
if fd < 0:
    out["memfd"] = ctypes.get_errno()
else:
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size)
        m[:] = b"\1" * size
        held.append(m)
        out["memfd"] = 0
    except OSError as e:
        out["memfd"] = e.errno
sid = libc.shmget(0, size, 0o1000 | 0o600 | 0o4000)  # IPC_PRIVATE; IPC_CREAT | 0600 | SHM_HUGETLB
if sid < 0:
    out["shm"] = ctypes.get_errno()
else:
    a = libc.shmat(sid, None, 0)
    libc.shmctl(sid, 0, None)  # IPC_RMID: gone with its last attach
    out["shm"] = 0 if a not in (None, ctypes.c_void_p(-1).value) else ctypes.get_errno()
    if out["shm"] == 0:
        ctypes.memset(a, 1, size)
out["free_after"] = free()
print(json.dumps(out))
"""

THP = "import mmap; m = mmap.mmap(-1, 4 << 20); m.madvise(mmap.MADV_HUGEPAGE); m[:] = b'1' * (4 << 20); print('ok')"  # noqa: E501


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their cgroups and answers.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


@pytest.fixture(scope="module")
def reserved() -> Iterator[int]:
    """The operator's reservation; what the host had before, restored after."""
    before = NR_HUGEPAGES.read_text()
    NR_HUGEPAGES.write_text(str(RESERVED))
    try:
        got = int(NR_HUGEPAGES.read_text())
        assert got > 0, "the host could not reserve a huge page for the probe"
        yield got
    finally:
        NR_HUGEPAGES.write_text(before)


@pytest.mark.parametrize("runtime", ["runc", "crun"])
@pytest.mark.parametrize("user", ["nobody", "root"])
def test_a_sandbox_takes_no_huge_page(agent: AgentProcess, reserved: int, runtime: str, user: str) -> None:
    sb = agent.create(memory_mb=64, runtime=runtime).sandbox_id
    try:
        res = agent.py(sb, TAKE, user=user, timeout_sec=60)
        assert res.exit_code == 0, res
        out = json.loads(res.stdout)
        assert out == {"mmap": EPERM, "memfd": EPERM, "shm": EPERM, "free_after": reserved}, out
        # Transparent huge pages stay: ordinary memory, charged to the sandbox as any.
        thp = agent.py(sb, THP, user=user)
        assert thp.stdout == b"ok\n", thp
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
