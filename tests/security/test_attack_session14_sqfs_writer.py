"""Session 14: what the image writer (``warren-layer-sqfs``, native/layer_sqfs.c) can still do
once something it parsed took it over.

It replaced tar2sqfs as the packer: it reads the tar a layer's converter wrote (a converter a
crafted layer took over could write anything) and writes the layer's image. tar2sqfs ran under
the converter's launcher filter, which had to keep execve (the filter went on before tar2sqfs'
own exec) and every file call: taken over, it could exec any program of the host as its uid,
open any file that uid may read (world-readable host files) and create files wherever that uid
may write. The writer installs its filters itself, once its output is open and before its first
read of the tar: the converter's (no signal, ptrace, socket, namespace, new process) and an
allow-list of its own (read, write, pwrite, memory never executable, exit): no exec, no open of
any path, no executable mapping.

A take-over is simulated where a crafted input would take it over: a library preloaded into the
real writer, run as the agent runs it (``setpriv`` to a uid of its own), replaces ``read`` and
runs the attacker's code at the writer's first read of the tar.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.test_attack_session12_native_convert import END, member
from warren.agent import layer_image

pytestmark = pytest.mark.root  # the writer drops from root to a uid of its own

PROBES = (
    "execve",
    "open_host_file",
    "open_dir",
    "create",
    "unlink_output",
    "symlink",
    "socket",
    "kill",
    "fork",
    "ptrace",
    "mmap_exec",
    "mprotect_exec",
)

TAKEOVER_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static ssize_t (*real_read)(int, void *, size_t);

static void report(const char *what, long r) { /* write(2) itself: dprintf's stream wants fstat */
    char line[128];
    int n = snprintf(line, sizeof line, "%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
    write(2, line, (size_t)n);
}

/* The writer's first read of the tar: the attacker's code runs here. */
ssize_t read(int fd, void *buf, size_t n) {
    static int done;
    if (fd == 0 && !done) {
        done = 1;
        pid_t victim = (pid_t)atoi(getenv("VICTIM"));
        report("open_host_file", open("/etc/passwd", O_RDONLY));
        report("open_dir", open("/", O_RDONLY | O_DIRECTORY));
        report("create", open("planted", O_WRONLY | O_CREAT | O_EXCL, 0600));
        report("unlink_output", unlink("layer.sqfs"));
        report("symlink", symlink("/etc/passwd", "link"));
        report("socket", socket(AF_UNIX, SOCK_STREAM, 0));
        report("kill", kill(victim, SIGKILL));
        long child = syscall(SYS_clone, (long)SIGCHLD, 0L, 0L, 0L, 0L);
        if (child == 0) _exit(0);
        report("fork", child);
        report("ptrace", ptrace(PTRACE_ATTACH, victim, NULL, NULL));
        void *m = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        report("mmap_exec", m == MAP_FAILED ? -1 : 0);
        void *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        report("mprotect_exec", w == MAP_FAILED ? -1 : mprotect(w, 4096, PROT_READ | PROT_EXEC));
        char *argv[] = {"sh", "-c", "echo execve=ok >&2", NULL}; /* what ran says so itself */
        report("execve", execve("/bin/sh", argv, environ));
        _exit(0);
    }
    if (!real_read) real_read = dlsym(RTLD_NEXT, "read"); /* before any filter: other libraries' */
    return real_read(fd, buf, n);                        /* constructors may read first */
}
"""


@pytest.fixture(scope="module")
def takeover_lib() -> Iterator[str]:
    """The attacker's library, where any uid can load it from."""
    where = tempfile.mkdtemp(prefix="warren-s14-takeover-")
    os.chmod(where, 0o755)
    src, lib = os.path.join(where, "takeover.c"), os.path.join(where, "takeover.so")
    Path(src).write_text(TAKEOVER_C)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-o", lib, src, "-ldl"], check=True, capture_output=True
    )
    os.chmod(lib, 0o755)
    yield lib
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def uid() -> Iterator[int]:
    """A packer uid, as the agent takes one per run."""
    taken = layer_image._take_uid()
    yield taken
    layer_image._release_uid(taken)


@pytest.fixture
def victim(uid: int) -> Iterator[int]:
    """A process of the writer's own uid (another of its runs, say): the easiest to reach."""
    proc = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _out_dir(tmp_path: Path, uid: int) -> Path:
    """The writer's directory, as ``layer_image._out_dir`` makes it and ``_Packer`` hands it over."""
    out = layer_image._out_dir(tmp_path)
    os.chown(out, uid, uid)
    return out


def _taken_over(program: list[str], lib: str, uid: int, victim: int, cwd: Path) -> dict[str, str]:
    """``program`` run as the packer is run (its uid, no new privileges, in its directory) with
    the attacker's library preloaded, fed a converted tar: what each probe got."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", *program]
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": lib, "VICTIM": str(victim)}
    tar = member(b"a", b"a") + END
    done = subprocess.run(argv, input=tar, capture_output=True, cwd=cwd, env=env, timeout=60, check=False)
    got = dict(line.split("=", 1) for line in done.stderr.decode().splitlines() if "=" in line)
    assert set(got) == set(PROBES), (done.returncode, done.stderr)
    return got


def _alive(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_the_writer_taken_over_is_refused(tmp_path: Path, takeover_lib: str, uid: int, victim: int) -> None:
    writer = layer_image.native_writer()
    assert writer is not None, "the image writer is not built: run `make setup`"
    out = _out_dir(tmp_path, uid)
    got = _taken_over([writer, layer_image.IMAGE], takeover_lib, uid, victim, out)
    assert got == dict.fromkeys(PROBES, "EPERM"), got
    assert sorted(os.listdir(out)) == [layer_image.IMAGE]  # nothing planted, its output kept
    assert _alive(victim)


def test_the_probes_are_real_without_the_writers_filters(
    tmp_path: Path, takeover_lib: str, uid: int, victim: int
) -> None:
    """The same library in a program without filters of its own (``cat``, reading the tar the
    same way), as the same uid: the file calls and exec succeed. What refused them above is the
    writer's own filter, not the uid or the preload."""
    out = _out_dir(tmp_path, uid)
    got = _taken_over(["cat"], takeover_lib, uid, victim, out)
    shown = ("open_host_file", "open_dir", "create", "symlink", "mmap_exec", "mprotect_exec", "execve")
    assert {k: got[k] for k in shown} == dict.fromkeys(shown, "ok"), got
    if got["kill"] == "ok":  # the signal is sent; the victim dies as soon as it is scheduled
        deadline = time.monotonic() + 30
        while _alive(victim) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _alive(victim) == (got["kill"] != "ok")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_an_installs_writer_runs_under_both_filters(tmp_path: Path) -> None:
    """A real install's packer (``StreamedImage``, as the agent makes an image), held mid-layer:
    the writer, as a uid of its own, under two filters (the converter's and its own)."""
    writer = layer_image.native_writer()
    assert writer is not None, "the image writer is not built: run `make setup`"
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    image = layer_image.StreamedImage(work, size=1 << 20, uid_base=1 << 30, max_bytes=1 << 30, native=True)
    try:
        image.put(member(b"a", b"a"))  # no end yet: the writer waits for more
        pid = image._packer.proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _status(pid).get("Seccomp_filters") != "2":
            time.sleep(0.05)  # setpriv and prlimit exec it; it confines itself once its output is open
        status = _status(pid)
        assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(writer)
        assert status["Seccomp"] == "2" and status["Seccomp_filters"] == "2", status
        assert status["NoNewPrivs"] == "1"
        assert int(status["Uid"].split()[0]) >= layer_image.PACKER_UID_BASE
        image.put(END)
        assert image.finish().files == 1  # the filters refuse nothing an image needs
        assert (work / layer_image.IMAGE).stat().st_size > 0
    finally:
        image.abort()
        shutil.rmtree(work, ignore_errors=True)


def test_a_crafted_tar_cannot_send_the_writer_elsewhere(tmp_path: Path, uid: int) -> None:
    """What a converter taken over could write: names leaving the image's tree, links out, a
    device. Refused (exit 1, one line), and nothing written outside the writer's directory."""
    writer = layer_image.native_writer()
    assert writer is not None, "the image writer is not built: run `make setup`"
    out = _out_dir(tmp_path, uid)
    for name in (b"../escape", b"/etc/escape", b"a/../../escape"):
        done = subprocess.run(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--no-new-privs",
                writer,
                "x.sqfs",
            ],
            input=member(name, b"x") + END,
            capture_output=True,
            cwd=out,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1 and done.stderr.startswith(b"warren-layer-sqfs: "), done.stderr
        (out / "x.sqfs").unlink()
    assert not (tmp_path / "escape").exists() and not Path("/etc/escape").exists()
