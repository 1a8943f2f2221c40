"""The seccomp filter of the layer converter's child (docs/templates.md §2): an allow-list of
exactly what a conversion takes, so a converter a crafted layer took over can do nothing else.

Once its fds are open and its imports done, the child reads the layer from one fd, writes the
image tar to a second (``write``, or ``splice`` from the first) and one JSON result to a third,
and uses its own memory. Measured with strace over the tests' layers (the unit, attack and
random corpora; 60 000 members; a 64 MiB file), the Python converter's calls after the filter
are ``read``, ``write``, ``splice``, ``close``, ``brk``, ``mmap`` and ``exit_group``; the list
adds what the same code may call under memory pressure or a signal (``munmap``, ``mremap``,
``madvise``, ``futex``, ``rt_sigreturn``, ``exit``) and what the sanitizers' runtime calls in
the tests' ASan build of the compiled converter (``sigaltstack``, ``gettid``). ``read`` is
allowed on the layer's fd only, ``write`` on the output and the result fds only, ``splice`` from
the one to the other only, ``mmap`` never with ``PROT_EXEC``. Anything else fails with
``EPERM``: every other system call, and so every call newer than this list (``listmount``,
whatever the next kernel adds). A call of another ABI (i386, or x32 on x86_64) kills the
process. ``native/seccomp.c`` (``confine_converter``) is the same filter for the compiled
converter.

Standard library only (ctypes), as all of ``warren.layers``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import platform
from dataclasses import dataclass

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
X32_SYSCALL_BIT = 0x40000000
# struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (its low word first on both
# architectures: fds and mmap's prot are 32-bit values the kernel takes from the low word)
_NR, _ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i


# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_JUMPS = (_JEQ_K, _JGE_K, _JSET_K)

# Allowed whatever their arguments: they touch nothing but the process itself.
ALLOWED = (
    "close", "brk", "munmap", "mremap", "madvise", "futex", "rt_sigreturn", "sigaltstack", "gettid",
    "exit", "exit_group",
)  # fmt: skip
# Allowed with their arguments checked (below): read, write, splice, mmap.
_CHECKED = ("read", "write", "splice", "mmap")

# (AUDIT_ARCH_*, system call numbers) of the architectures the agent runs on
_X86_64 = {
    "read": 0, "write": 1, "close": 3, "mmap": 9, "brk": 12, "munmap": 11, "mremap": 25,
    "madvise": 28, "futex": 202, "rt_sigreturn": 15, "exit": 60, "exit_group": 231, "splice": 275,
    "sigaltstack": 131, "gettid": 186,
}  # fmt: skip
_AARCH64 = {
    "read": 63, "write": 64, "close": 57, "mmap": 222, "brk": 214, "munmap": 215, "mremap": 216,
    "madvise": 233, "futex": 98, "rt_sigreturn": 139, "exit": 93, "exit_group": 94, "splice": 76,
    "sigaltstack": 132, "gettid": 178,
}  # fmt: skip
ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}


@dataclass(frozen=True)
class Fds:
    """The child's three fds: the layer (read), the image tar (written), the result (written)."""

    src: int
    out: int
    result: int


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


# An instruction before layout: (code, jump if true, jump if false, k), the jumps as labels
# ("" for the next instruction).
_Ins = tuple[int, str, str, int]


def _body(numbers: dict[str, int], fds: Fds | None) -> list[_Ins | str]:
    """The checks after the ABI's: instructions and the labels they jump to (strings)."""
    prog: list[_Ins | str] = [(_JEQ_K, "allow", "", numbers[name]) for name in ALLOWED]
    prog += [(_JEQ_K, name, "", numbers[name]) for name in _CHECKED[:-1]]
    prog += [(_JEQ_K, "mmap", "deny", numbers["mmap"])]

    def only(arg: int, *values: int) -> list[_Ins | str]:
        if fds is None:  # no fds given: any (the filter still allows no other call)
            return [(_RET_K, "", "", SECCOMP_RET_ALLOW)]
        checks: list[_Ins | str] = [(_LD_W_ABS, "", "", _arg(arg))]
        checks += [(_JEQ_K, "allow", "", v) for v in values[:-1]]
        return [*checks, (_JEQ_K, "allow", "deny", values[-1])]

    prog += ["read", *only(0, fds.src if fds else 0)]
    prog += ["write", *only(0, *((fds.out, fds.result) if fds else (0,)))]
    if fds is None:
        prog += ["splice", (_RET_K, "", "", SECCOMP_RET_ALLOW)]
    else:
        prog += ["splice", (_LD_W_ABS, "", "", _arg(0)), (_JEQ_K, "", "deny", fds.src)]
        prog += only(2, fds.out)
    prog += ["mmap", (_LD_W_ABS, "", "", _arg(2)), (_JSET_K, "deny", "allow", mmap.PROT_EXEC)]
    return prog


def program(machine: str | None = None, fds: Fds | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as BPF instructions (code, jt, jf, k) for ``machine`` (this one's by default),
    its reads and writes held to ``fds`` (None: any fd); ``OSError`` on an architecture without
    a table here."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, numbers = ARCHES[machine]
    prog: list[_Ins | str] = [
        (_LD_W_ABS, "", "", _ARCH),
        (_JEQ_K, "", "kill", arch),  # another ABI's numbers mean other calls
        (_LD_W_ABS, "", "", _NR),
    ]
    if machine == "x86_64":
        prog.append((_JGE_K, "kill", "", X32_SYSCALL_BIT))
    prog += _body(numbers, fds)
    prog += ["allow", (_RET_K, "", "", SECCOMP_RET_ALLOW)]
    prog += ["deny", (_RET_K, "", "", SECCOMP_RET_ERRNO | errno.EPERM)]
    prog += ["kill", (_RET_K, "", "", SECCOMP_RET_KILL_PROCESS)]
    return _layout(prog)


def _layout(prog: list[_Ins | str]) -> list[tuple[int, int, int, int]]:
    """Labels resolved to the forward offsets classic BPF jumps by."""
    at: dict[str, int] = {}
    code: list[_Ins] = []
    for item in prog:
        if isinstance(item, str):
            at[item] = len(code)
        else:
            code.append(item)

    def offset(i: int, label: str) -> int:
        return 0 if not label else at[label] - i - 1

    out = []
    for i, (op, jt, jf, k) in enumerate(code):
        if op in _JUMPS:
            out.append((op, offset(i, jt), offset(i, jf), k))
        else:
            out.append((op, 0, 0, k))
    assert all(0 <= j < 256 for _, jt, jf, _ in out for j in (jt, jf))
    return out


def confine(fds: Fds | None = None) -> None:
    """Install the filter on this process (for good: it is inherited, never removed), its
    reads and writes held to ``fds``. Needs ``no_new_privs`` (or CAP_SYS_ADMIN). ``OSError``
    when it cannot be installed."""
    prog = program(fds=fds)
    filters = (_Filter * len(prog))(*(_Filter(*ins) for ins in prog))
    fprog = _Prog(len(prog), ctypes.cast(filters, ctypes.POINTER(_Filter)))
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
