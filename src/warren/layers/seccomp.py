"""A seccomp filter for the layer converter's child (docs/templates.md §2): what a converter a
crafted layer took over could still do with the system calls a converter never makes.

The child reads one pipe and writes two; it needs no signal to another process, no ptrace, no
socket, no exec, no new process or namespace. Those calls (and a few kernel interfaces
with a long record of bugs: keyctl, bpf, userfaultfd, perf_event_open, io_uring) fail with
``EPERM``; a call of another ABI (i386 or x32 on x86_64) kills the process. A deny list, not an
allow list: Python's own calls (mmap, brk, futex, …) vary with its version, and what a converter
must not do is the short list. ``native/seccomp.c`` is the same filter for the compiled
converter and for ``tar2sqfs`` (which keeps ``execve`` and threads).

Standard library only (ctypes), as all of ``warren.layers``.
"""

from __future__ import annotations

import ctypes
import errno
import platform

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
X32_SYSCALL_BIT = 0x40000000
# struct seccomp_data: nr at 0, arch at 4
_NR, _ARCH = 0, 4
# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

DENIED = (
    # signals to any process, and ways into other processes
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # the network, and unix sockets to other processes
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # new programs, processes, namespaces
    "execve", "execveat", "fork", "vfork", "clone", "clone3", "unshare", "setns",
    # kernel interfaces a converter never needs
    "keyctl", "add_key", "request_key", "bpf", "userfaultfd", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "mount", "umount2",
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip

# (AUDIT_ARCH_*, system call numbers) of the architectures the agent runs on
_X86_64 = {
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "socket": 41, "socketpair": 53,
    "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288, "execve": 59,
    "execveat": 322, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "unshare": 272,
    "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "userfaultfd": 323,
    "perf_event_open": 298, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "mount": 165, "umount2": 166, "open_by_handle_at": 304, "name_to_handle_at": 303,
}  # fmt: skip
_AARCH64 = {
    "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "ptrace": 117,
    "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "socket": 198,
    "socketpair": 199, "connect": 203, "bind": 200, "listen": 201, "accept": 202, "accept4": 242,
    "execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "unshare": 97, "setns": 268,
    "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "userfaultfd": 282,
    "perf_event_open": 241, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "mount": 40, "umount2": 39, "open_by_handle_at": 265, "name_to_handle_at": 264,
}  # fmt: skip
ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as BPF instructions (code, jt, jf, k) for ``machine`` (this one's by default);
    ``OSError`` on an architecture without a table here."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, numbers = ARCHES[machine]
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    prog = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # another ABI's numbers mean other calls
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        prog += [(_JGE_K, 0, 1, X32_SYSCALL_BIT), (_RET_K, 0, 0, deny)]
    nrs = sorted({numbers[name] for name in DENIED if name in numbers})
    for i, nr in enumerate(nrs):  # a match jumps to the deny at the end
        prog.append((_JEQ_K, len(nrs) - i, 0, nr))
    prog += [(_RET_K, 0, 0, SECCOMP_RET_ALLOW), (_RET_K, 0, 0, deny)]
    return prog


def confine() -> None:
    """Install the filter on this process (for good: it is inherited, never removed). Needs
    ``no_new_privs`` (or CAP_SYS_ADMIN). ``OSError`` when it cannot be installed."""
    prog = program()
    filters = (_Filter * len(prog))(*(_Filter(*ins) for ins in prog))
    fprog = _Prog(len(prog), ctypes.cast(filters, ctypes.POINTER(_Filter)))
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
