"""Session 13: what a layer converter a crafted layer took over can still do.

The converter child (Python, or the compiled one it execs) parses the tenant's tar. It ran as
the shared ``nobody``: taken over, it could signal every other process of nobody on the host,
open sockets, exec programs and make processes and user namespaces. ``tar2sqfs`` (its own uid
per run) could do the same but signal nobody's. Now the child runs as a uid of its own per
conversion, under a seccomp filter (``warren/layers/seccomp.py``; ``native/seccomp.c`` in the
compiled converter, from before its first read) that refuses signals, ptrace, sockets, exec,
new processes and namespaces; ``tar2sqfs`` starts under the same filter, keeping threads and
exec (the filter is installed before its exec).

A take-over is simulated the way the server runs the converter: a forked child drops as
``convert_server`` drops it, and then runs the attacker's code where the converter would run.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.test_attack_session12_native_convert import END, member
from warren.agent import layer_convert, layer_image
from warren.layers import convert_server

pytestmark = pytest.mark.root  # the converter drops from root to its own uid

NOBODY = 65534
CLONE_NEWUSER = 0x10000000
PTRACE_ATTACH = 16
# Read here, not in the confined child: its allow-list refuses uname (session 14).
TGKILL = 234 if os.uname().machine == "x86_64" else 131
SYS_CLONE = 56 if os.uname().machine == "x86_64" else 220


def _errno_of(call: Callable[[], object]) -> str:
    try:
        call()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok"


def _libc_call(name: str, *args: Any) -> Callable[[], None]:
    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, name)
        fn.restype = ctypes.c_long
        if fn(*args) == -1:
            raise OSError(ctypes.get_errno(), name)

    return run


def _fork_and_reap() -> None:
    """A new process by the raw clone(2), as compiled code would make it: ``os.fork`` also runs
    the at-fork handlers of whatever the test process has loaded (gRPC's restart its threads
    after the refused fork, which the filter refuses in turn, logging without end)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid = libc.syscall(SYS_CLONE, signal.SIGCHLD, 0, 0, 0, 0)
    if pid == -1:
        raise OSError(ctypes.get_errno(), "clone")
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _probes(victim: int) -> dict[str, Callable[[], object]]:
    """What a taken-over converter tries (every one refused: EPERM)."""
    return {
        "kill": lambda: os.kill(victim, signal.SIGKILL),
        "tgkill": _libc_call("syscall", TGKILL, victim, victim, 9),
        "ptrace": _libc_call("ptrace", PTRACE_ATTACH, victim, None, None),
        "socket_inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
        "socket_unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close(),
        "socketpair": lambda: [s.close() for s in socket.socketpair()],
        "execve": lambda: os.execv("/bin/true", ["true"]),
        "fork": _fork_and_reap,
        "unshare_user": _libc_call("unshare", CLONE_NEWUSER),
    }


PROBES = sorted(_probes(0))


@pytest.fixture(params=["nobody", "its-own-uid"])
def victim(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """(pid, uid) of a process the converter must not reach: one of nobody's (another
    converter, before, or any daemon of nobody), and one of the converter's own uid."""
    uid = NOBODY if request.param == "nobody" else layer_image._take_uid()
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"],
        stdin=subprocess.DEVNULL,
    )
    try:
        yield proc.pid, uid
    finally:
        proc.kill()
        proc.wait()
        if uid != NOBODY:
            layer_image._release_uid(uid)


def _as_taken_over_converter(uid: int, attack: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``attack`` in a forked child dropped and confined as the converter server's child is
    (``convert_server.drop`` then ``confined``), where its converter would run; its answer."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(r)
            convert_server.drop(uid, 60)
            got = convert_server.confined(attack)
            os.write(w, json.dumps(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with open(r, "rb") as f:
        data = f.read()
    os.waitpid(child, 0)
    return dict(json.loads(data or b"{}"))


@pytest.mark.parametrize("probe", PROBES)
def test_a_taken_over_python_converter_is_refused(victim: tuple[int, int], probe: str) -> None:
    pid, victim_uid = victim
    uid = victim_uid if victim_uid != NOBODY else layer_image._take_uid()
    try:
        got = _as_taken_over_converter(uid, lambda: {"kind": "probe", probe: _errno_of(_probes(pid)[probe])})
    finally:
        if uid != victim_uid:
            layer_image._release_uid(uid)
    assert got.get(probe) == "EPERM", got
    assert _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# -------------------------------------------------------------- the real processes, as started


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _children(parent: int, exe: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid == parent and os.readlink(f"/proc/{entry}/exe") == exe:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _wait_for(find: Callable[[], list[int]], what: str) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pids := find():
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"{what} was not found")


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_an_installs_converter_and_tar2sqfs_run_confined_as_uids_of_their_own(
    tmp_path: Path, native: bool
) -> None:
    """A real install's processes (``StreamedImage``, as the agent makes an image), held open
    mid-layer: the converter and tar2sqfs each under a seccomp filter, as uids of their own."""
    if native:
        exe = layer_convert.native_converter()
        assert exe is not None, "the compiled converter is not built: run `make setup`"
    else:
        exe = os.path.realpath(sys.executable)
    layer_convert.warm()
    server = layer_convert._server
    assert server is not None
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    image = layer_image.StreamedImage(work, size=1 << 20, uid_base=1 << 30, max_bytes=1 << 30, native=native)
    try:
        image.put(member(b"a", b"a"))  # no end yet: both wait for more
        conv = _wait_for(lambda: _children(server[0].pid, exe), "the converter")
        tar2sqfs = os.path.realpath(layer_image.packer_path())  # or the image writer, where built
        packer = _wait_for(lambda: _children(os.getpid(), tar2sqfs), "the packer")
        # the writer confines itself once its output is open, a moment after its exec; the
        # converter child once it has its uid and limits, before its first read (CI saw it
        # read between its fork and its filter under load)
        _wait_for(lambda: [packer] if _status(packer)["Seccomp"] == "2" else [], "the packer's filter")
        _wait_for(lambda: [conv] if _status(conv)["Seccomp"] == "2" else [], "the converter's filter")
        c, p = _status(conv), _status(packer)
        assert c["Seccomp"] == "2" and p["Seccomp"] == "2", (c["Seccomp"], p["Seccomp"])
        c_uid, p_uid = int(c["Uid"].split()[0]), int(p["Uid"].split()[0])
        assert c_uid not in (0, NOBODY) and p_uid not in (0, NOBODY), (c_uid, p_uid)
        assert c_uid != p_uid
        image.put(END)
        # it still converts: the filter refuses nothing a conversion does
        stats = image.finish()
        assert stats.files == 1
        assert (work / layer_image.IMAGE).stat().st_size > 0
    finally:
        image.abort()
        shutil.rmtree(work, ignore_errors=True)


def test_tar2sqfs_taken_over_is_refused(victim: tuple[int, int]) -> None:
    """tar2sqfs' launcher (``--confined-exec``, as ``_Packer`` runs it) in front of a program
    that attacks instead (the system python3: the one any uid may run): signals, ptrace,
    sockets, a process, a namespace refused; threads
    (tar2sqfs' compressor) still run."""
    native = layer_convert.native_converter()
    assert native is not None, "the compiled converter is not built: run `make setup`"
    pid, uid = victim
    script = f"""
import ctypes, errno, json, os, signal, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
def err(f):
    try:
        f()
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"
def c(name, *a):
    def run():
        if getattr(libc, name)(*a) == -1:
            raise OSError(ctypes.get_errno(), name)
    return run
def fork():
    p = os.fork()
    if p == 0:
        os._exit(0)
    os.waitpid(p, 0)
got = {{
    "kill": err(lambda: os.kill({pid}, signal.SIGKILL)),
    "ptrace": err(c("ptrace", {PTRACE_ATTACH}, {pid}, None, None)),
    "socket_inet": err(lambda: socket.socket()),
    "socket_unix": err(lambda: socket.socket(socket.AF_UNIX)),
    "fork": err(fork),
    "unshare_user": err(c("unshare", {CLONE_NEWUSER})),
}}
t = threading.Thread(target=lambda: got.__setitem__("thread", "ran"))
t.start()
t.join()
print(json.dumps(got))
"""
    argv = [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
        native, "--confined-exec", "/usr/bin/python3", "-I", "-S", "-c", script,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got.pop("thread") == "ran"
    assert got == dict.fromkeys(got, "EPERM"), got
    assert _alive(pid)
