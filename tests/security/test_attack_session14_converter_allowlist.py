"""Session 14: a layer converter a crafted layer took over, against its seccomp allow-list.

Session 13 put the converter child (Python, and the compiled one it execs) under a deny-list:
signals, ptrace, sockets, exec, new processes and namespaces were refused, everything else
allowed. Taken over, the converter could still open and read any file its uid may read, read
and write any fd the server left it, write into the agent's log (its stderr), map memory
executable, and make every system call the list did not name, including those newer than it
(``listmount``, 458 on x86_64, which libseccomp 2.5.4 does not know). Now the filter is an
allow-list (``warren/layers/seccomp.py``; ``confine_converter`` in ``native/seccomp.c``): read
of the layer's fd, write of the output and result fds, splice between them, its own memory,
exit; anything else ``EPERM``, another ABI's call kills it.

The Python take-over is simulated the way the server runs its child (``convert_server.drop``
then ``confined`` with the child's three fds); the compiled one by a program linked with
``native/seccomp.c`` that confines itself as ``warren-layer-convert`` does, then attacks.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from warren.agent import layer_image
from warren.layers import convert_server, seccomp

pytestmark = pytest.mark.root  # the converter drops from root to its own uid

NATIVE = Path(__file__).resolve().parents[2] / "native"
X86_64 = os.uname().machine == "x86_64"
LISTMOUNT = 458  # Linux 6.8; the same number in x86_64's table and the generic one (aarch64)
X32_GETPID = 0x40000000 | 39
SIGSYS = int(signal.SIGSYS)


def _errno_of(call: Callable[[], object]) -> str:
    try:
        call()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok"


class Fds:
    """The child's three pipes as the server hands them over (layer in, image out, result),
    and a secret file the server (root) had open: an fd the converter was not given."""

    def __init__(self, secret: Path) -> None:
        self.src_r, self.src_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.res_r, self.res_w = os.pipe()
        self.other_r, self.other_w = os.pipe()
        self.secret = os.open(secret, os.O_RDONLY)
        os.write(self.src_w, b"layer bytes")


def _python_probes(fds: Fds, libc: ctypes.CDLL) -> dict[str, Callable[[], object]]:
    """What a taken-over Python converter tries (each refused: EPERM)."""

    def raw(nr: int, *args: int) -> Callable[[], None]:
        def run() -> None:
            if libc.syscall(nr, *args) == -1:
                raise OSError(ctypes.get_errno(), f"syscall {nr}")

        return run

    return {
        "open_a_file": lambda: os.open("/etc/hostname", os.O_RDONLY),
        "read_an_fd_not_given": lambda: os.read(fds.secret, 16),
        "write_the_agents_log": lambda: os.write(2, b""),
        "write_an_fd_not_given": lambda: os.write(fds.other_w, b"x"),
        "splice_elsewhere": lambda: os.splice(fds.src_r, fds.other_w, 4),
        "listmount_by_number": raw(LISTMOUNT, 0, 0, 0, 0),
        "mmap_executable": lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC),
        "mprotect": raw(10 if X86_64 else 226, 0, 4096, 7),
        "uname": os.uname,
    }


PYTHON_PROBES = [
    "open_a_file", "read_an_fd_not_given", "write_the_agents_log", "write_an_fd_not_given",
    "splice_elsewhere", "listmount_by_number", "mmap_executable", "mprotect", "uname",
]  # fmt: skip


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(b"root's secret")
    p.chmod(0o600)
    return p


@pytest.fixture
def uid() -> Iterator[int]:
    u = layer_image._take_uid()
    try:
        yield u
    finally:
        layer_image._release_uid(u)


def _as_taken_over_converter(
    uid: int, fds: Fds, attack: Callable[[ctypes.CDLL], dict[str, str]]
) -> tuple[dict[str, str], int]:
    """``attack`` in a forked child dropped and confined as the server's child is, with the
    child's three fds; (its answer, written to its result fd, and its wait status)."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # loaded before, as the server's is
            libc.syscall.restype = ctypes.c_long
            convert_server.drop(uid, 60)
            got = convert_server.confined(lambda: attack(libc), seccomp.Fds(fds.src_r, fds.out_w, fds.res_w))
            os.write(fds.res_w, json.dumps(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(fds.res_w)
    fds.res_w = -1
    with open(fds.res_r, "rb", closefd=False) as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    return dict(json.loads(data or b"{}")), status


@pytest.mark.parametrize("probe", PYTHON_PROBES)
def test_a_taken_over_python_converter_gets_nothing_outside_its_allow_list(
    secret: Path, uid: int, probe: str
) -> None:
    fds = Fds(secret)
    try:
        got, status = _as_taken_over_converter(
            uid, fds, lambda libc: {probe: _errno_of(_python_probes(fds, libc)[probe])}
        )
    finally:
        _close(fds)
    assert os.WIFEXITED(status), status
    assert got == {probe: "EPERM"}, got


def test_a_python_converters_own_work_still_runs(secret: Path, uid: int) -> None:
    """Reading its layer, writing its output and result, splicing one to the other, memory."""

    def work(libc: ctypes.CDLL) -> dict[str, str]:
        return {
            "read": _errno_of(lambda: os.read(fds.src_r, 6)),
            "write": _errno_of(lambda: os.write(fds.out_w, b"tar")),
            "splice": _errno_of(lambda: os.splice(fds.src_r, fds.out_w, 5)),
            "memory": _errno_of(lambda: bytearray(64 << 20)),
        }

    fds = Fds(secret)
    try:
        got, status = _as_taken_over_converter(uid, fds, work)
        assert os.WIFEXITED(status), status
        assert got == dict.fromkeys(("read", "write", "splice", "memory"), "ok"), got
        assert os.read(fds.out_r, 100) == b"tarbytes"  # "layer " read, "bytes" spliced
    finally:
        _close(fds)


@pytest.mark.skipif(not X86_64, reason="x32 exists on x86_64 only")
def test_a_python_converter_making_an_x32_call_is_killed(secret: Path, uid: int) -> None:
    fds = Fds(secret)
    try:
        got, status = _as_taken_over_converter(
            uid, fds, lambda libc: {"x32": _errno_of(lambda: libc.syscall(X32_GETPID))}
        )
    finally:
        _close(fds)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGSYS, (got, status)


def _close(fds: Fds) -> None:
    for name, fd in list(vars(fds).items()):
        if isinstance(fd, int) and fd >= 0:
            os.close(fd)
            setattr(fds, name, -1)


# ------------------------------------------------------------------ the compiled converter

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
int confine_converter(int in, int out, int result);
/* argv: PROBE IN OUT RESULT OTHER SECRET; the answer (an errno name's number) goes to RESULT */
int main(int argc, char **argv) {
    if (argc != 7) return 2;
    int in = atoi(argv[2]), out = atoi(argv[3]), res = atoi(argv[4]);
    int other = atoi(argv[5]), secret = atoi(argv[6]);
    const char *p = argv[1];
    char buf[64];
    if (confine_converter(in, out, res) != 0) return 3;
    long r = 0;
    errno = 0;
    if (!strcmp(p, "open_a_file")) r = open("/etc/hostname", O_RDONLY);
    else if (!strcmp(p, "read_an_fd_not_given")) r = read(secret, buf, 16);
    else if (!strcmp(p, "write_the_agents_log")) r = write(2, "", 0);
    else if (!strcmp(p, "write_an_fd_not_given")) r = write(other, "x", 1);
    else if (!strcmp(p, "splice_elsewhere")) r = splice(in, NULL, other, NULL, 4, 0);
    else if (!strcmp(p, "listmount_by_number")) r = syscall(458, 0, 0, 0, 0);
    else if (!strcmp(p, "mmap_executable"))
        r = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED
                ? -1 : 0;
    else if (!strcmp(p, "mprotect"))
        r = mprotect(buf - ((unsigned long)buf % 4096), 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    else if (!strcmp(p, "uname")) { struct utsname u; r = uname(&u); }
    else if (!strcmp(p, "own_work")) {
        r = read(in, buf, 6) == 6 && write(out, "tar", 3) == 3 && splice(in, NULL, out, NULL, 5, 0) == 5 &&
            malloc(64 << 20) != NULL ? 0 : -1;
    }
#if defined(__x86_64__)
    else if (!strcmp(p, "x32")) r = syscall(0x40000000 | 39);
#endif
    else return 4;
    int n = snprintf(buf, sizeof buf, "%d", r == -1 ? errno : 0);
    return write(res, buf, (size_t)n) == n ? 0 : 5;
}
"""


@pytest.fixture(scope="module")
def probe_program(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The attacker's code linked with the converter's filter (native/seccomp.c)."""
    d = tmp_path_factory.mktemp("native-probe")
    (d / "probe.c").write_text(PROBE_C)
    exe = d / "probe"
    cmd = ["gcc", "-O1", "-I", str(NATIVE), "-o", str(exe), str(d / "probe.c"), str(NATIVE / "seccomp.c")]
    subprocess.run(cmd, check=True)
    exe.chmod(0o755)
    d.chmod(0o755)
    return str(exe)


def _native(probe_program: str, probe: str, uid: int, secret: Path) -> tuple[str, int]:
    """The probe as the converter runs: its own uid, no_new_privs, its fds; (errno name or
    "ok", its exit status as subprocess reports it)."""
    fds = Fds(secret)
    try:
        given = (fds.src_r, fds.out_w, fds.res_w, fds.other_w, fds.secret)
        argv = [
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            probe_program, probe, *(str(fd) for fd in given),
        ]  # fmt: skip
        proc = subprocess.run(argv, pass_fds=given, capture_output=True, timeout=60, check=False)
        os.close(fds.res_w)
        fds.res_w = -1
        answer = os.read(fds.res_r, 64).decode()
    finally:
        _close(fds)
    if not answer:
        return "", proc.returncode
    code = int(answer)
    return ("ok" if code == 0 else errno.errorcode.get(code, answer)), proc.returncode


@pytest.mark.parametrize("probe", PYTHON_PROBES)
def test_a_taken_over_compiled_converter_gets_nothing_outside_its_allow_list(
    probe_program: str, secret: Path, uid: int, probe: str
) -> None:
    got, status = _native(probe_program, probe, uid, secret)
    assert (got, status) == ("EPERM", 0)


def test_a_compiled_converters_own_work_still_runs(probe_program: str, secret: Path, uid: int) -> None:
    assert _native(probe_program, "own_work", uid, secret) == ("ok", 0)


@pytest.mark.skipif(not X86_64, reason="x32 exists on x86_64 only")
def test_a_compiled_converter_making_an_x32_call_is_killed(
    probe_program: str, secret: Path, uid: int
) -> None:
    got, status = _native(probe_program, "x32", uid, secret)
    assert (got, status) == ("", -SIGSYS)
