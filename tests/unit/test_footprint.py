"""The one footprint rule (warren/footprint.py) against the agent's own numbers: the socket
bound and ceiling it enforces on runc/crun sandboxes (agent/runtime/socket_memory.py,
socket_ceiling.py) and gVisor's host-cgroup headroom (agent/runtime/gvisor.py). A change to
either side without the other fails here, so the scheduler never counts less than the agent
lets a sandbox hold."""

from __future__ import annotations

import pytest

from warren import footprint
from warren.agent.runtime import gvisor, socket_ceiling, socket_memory
from warren.config import RUNTIMES

MiB = 1 << 20
# Every size the API allows is a whole MiB; these cover the floor, the linear part (odd sizes
# too: the MiB rounds up), the ceiling's edge and beyond.
SIZES = [1, 63, 64, 65, 100, 128, 255, 256, 257, 511, 512, 513, 1000, 1023, 1024, 2047, 2048, 3000,
         4095, 4096, 4097, 8192, 65536, 262144]  # fmt: skip


def _agent_outside_mb(memory_mb: int, runtime: str) -> int:
    """What the agent lets a sandbox hold outside its limit, in MiB rounded up."""
    if runtime == "gvisor":
        extra = gvisor.MEMORY_HEADROOM
    else:
        extra = socket_ceiling.ceiling(socket_memory.bound(memory_mb * MiB))
    return -(-extra // MiB)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_footprint_is_the_agents_limit_plus_what_it_lets_a_sandbox_hold_outside(runtime: str) -> None:
    for memory_mb in [*SIZES, *range(1, 5000, 7)]:
        want = memory_mb + _agent_outside_mb(memory_mb, runtime)
        assert footprint.footprint_mb(memory_mb, runtime) == want, (memory_mb, runtime)


def test_the_constants_are_the_agents() -> None:
    assert footprint.SOCKET_FRACTION == socket_memory.FRACTION
    assert footprint.SOCKET_FLOOR == socket_memory.FLOOR
    assert footprint.SOCKET_CEILING == socket_memory.CEILING
    assert footprint.PAGE == socket_memory.PAGE
    assert socket_ceiling.ceiling(MiB) == footprint.SOCKET_CEILING_FACTOR * MiB
    assert footprint.GVISOR_HEADROOM == gvisor.MEMORY_HEADROOM
    assert footprint.GVISOR == gvisor.NAME


def test_the_table_in_docs_operations() -> None:
    """The numbers docs/operations.md ("Host capacity") gives."""
    table = {
        64: (96, 96, 160), 128: (160, 160, 224), 256: (288, 288, 352), 512: (576, 576, 608),
        1024: (1152, 1152, 1120), 4096: (4608, 4608, 4192),
    }  # fmt: skip
    for memory_mb, want in table.items():
        got = tuple(footprint.footprint_mb(memory_mb, r) for r in ("runc", "crun", "gvisor"))
        assert got == want, (memory_mb, got)
    assert footprint.footprint_mb(64, "an-unknown-runtime") == 96  # runc's rule
