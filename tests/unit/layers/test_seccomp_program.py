"""The converter's seccomp allow-list (warren/layers/seccomp.py) as BPF, run here by a small
interpreter of the instructions it uses, for both architectures: the aarch64 program cannot be
installed on this x86_64 machine, so its decisions are checked this way (the attack tests in
tests/security/test_attack_session14_converter_allowlist.py install the real one)."""

from __future__ import annotations

import errno
import struct

import pytest

from warren.layers import seccomp

ALLOW, DENY, KILL = (
    seccomp.SECCOMP_RET_ALLOW,
    seccomp.SECCOMP_RET_ERRNO | errno.EPERM,
    seccomp.SECCOMP_RET_KILL_PROCESS,
)
FDS = seccomp.Fds(src=5, out=7, result=9)
OTHER_ARCH = {"x86_64": 0x40000003, "aarch64": 0x40000028}  # i386, arm


def run(prog: list[tuple[int, int, int, int]], arch: int, nr: int, *args: int) -> int:
    """What the filter answers for one call (struct seccomp_data, little-endian)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x06:  # ret k
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_the_allow_list_on_each_architecture(machine: str) -> None:
    arch, nr = seccomp.ARCHES[machine]
    prog = seccomp.program(machine, FDS)
    assert len(prog) < 256
    assert run(prog, arch, nr["read"], FDS.src) == ALLOW
    assert run(prog, arch, nr["read"], FDS.out) == DENY
    assert run(prog, arch, nr["read"], 2) == DENY
    assert run(prog, arch, nr["write"], FDS.out) == ALLOW
    assert run(prog, arch, nr["write"], FDS.result) == ALLOW
    assert run(prog, arch, nr["write"], 2) == DENY
    assert run(prog, arch, nr["write"], FDS.src) == DENY
    assert run(prog, arch, nr["splice"], FDS.src, 0, FDS.out) == ALLOW
    assert run(prog, arch, nr["splice"], FDS.src, 0, 2) == DENY
    assert run(prog, arch, nr["splice"], 3, 0, FDS.out) == DENY
    assert run(prog, arch, nr["mmap"], 0, 4096, 3) == ALLOW  # PROT_READ | PROT_WRITE
    assert run(prog, arch, nr["mmap"], 0, 4096, 5) == DENY  # PROT_EXEC
    for name in seccomp.ALLOWED:
        assert run(prog, arch, nr[name]) == ALLOW, name
    # everything else, and numbers past any table (listmount, 458, and the next kernel's)
    known = set(nr.values())
    assert all(run(prog, arch, n) == DENY for n in range(600) if n not in known)
    assert run(prog, OTHER_ARCH[machine], nr["read"], FDS.src) == KILL
    if machine == "x86_64":
        assert run(prog, arch, 0x40000000 | nr["read"], FDS.src) == KILL  # x32


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_without_fds_reads_and_writes_of_any_fd_pass_and_nothing_else_does(machine: str) -> None:
    arch, nr = seccomp.ARCHES[machine]
    prog = seccomp.program(machine)
    assert run(prog, arch, nr["read"], 42) == ALLOW
    assert run(prog, arch, nr["splice"], 1, 0, 2) == ALLOW
    assert run(prog, arch, nr["mmap"], 0, 4096, 7) == DENY
    assert run(prog, arch, 458) == DENY


def test_an_architecture_without_a_table_is_refused() -> None:
    with pytest.raises(OSError):
        seccomp.program("riscv64", FDS)
