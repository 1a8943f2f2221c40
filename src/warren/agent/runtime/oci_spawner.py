"""The OCI spawner: a small root process the agent starts once, which runs the OCI runtime's
commands (``crun run``, ``crun delete``, …) for it by forking itself, without a shell.

Run as ``python -I -S oci_spawner.py`` (oci_spawn.Spawner starts it): it imports nothing but the
standard library and holds nothing of the agent (no keys, no gRPC threads). The agent cannot
fork itself for this: a fork of the agent runs gRPC's fork handlers, and a child made with a
``preexec_fn`` died with SIGSEGV before its exec (docs/benchmarks.md, "Session 9: the cold
create"). Before this helper, each crun call on a hybrid-cgroup host ran under
``unshare --mount … sh -c 'umount …; exec crun …'``: three programs, ~5 ms of CPU a call.

One request a line on stdin, one answer a line on stdout, both JSON, answered as they finish
(not in order: a slow ``crun run`` holds no one else's answer):

    {"id": 7, "argv": [...], "capture": true, "nofile": 4096, "hide": "/sys/fs/cgroup/unified",
     "stdio": null, "pass": ["/sys/fs/cgroup/.../cgroup.procs"], "timeout": 60.0}
                                            ->  {"id": 7, "rc": 0, "out": "...", "err": "...", "why": ""}
    {"kill": 7}                             ->  (none: request 7 answers once its process is reaped)

A request's child starts a session of its own (a Ctrl-C on the agent's terminal is not its),
with ``hide``: unshares its mount namespace, makes it private and moves the mount at that path
out of the way (onto ``HIDE_TO``: crun refuses the hybrid layout's cgroup2 mount; the agent and
every other process keep it), with
``nofile``: that RLIMIT_NOFILE (the sandbox inherits it, runtime/bundle.py), with PATH alone for
its environment (``runtime_env``), with stdin from
/dev/null and stdout/stderr to pipes (``capture``) or /dev/null (a container's init inherits
them: a pipe would stay open as long as the sandbox), then execs ``argv``. With ``stdio`` (a
directory: the sandbox's own small tmpfs), an unnamed file made there (``O_TMPFILE``) takes
/dev/null's place: crun hands its stdio to the container's user (``fchown``), and with the
host's /dev/null that made the host's one null device sandbox root's own, to ``chmod`` for every
process on the host and in every other sandbox (session 13). With ``pass`` (paths), each is
opened for writing by the child (host root) and left open as fds 3, 4, ... for the command
(``--preserve-fds``: the ``cmds`` cgroup's ``cgroup.procs`` files, cmds_cgroup.py). ``rc`` is the exit
status (minus the signal that ended it); ``why`` says what kept it from running or finishing:
the set-up step that failed, the deadline (its process group is killed after ``timeout``
seconds), output past ``MAX_OUT`` bytes (killed too). stderr keeps its last ``MAX_ERR`` bytes.

The spawner ends when the agent does (stdin reaches end of file). Commands still running go on,
as they would have as the agent's own children.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import time

CLONE_NEWNS, MS_REC, MS_PRIVATE, MS_MOVE, MNT_DETACH = 0x00020000, 16384, 1 << 18, 8192, 2
HIDE_TO = b"/run/warren/oci-hidden"  # an empty root-only dir, made at start: mounted on only in children
MAX_OUT = 8 << 20  # JSON may escape a byte as six: an answer line stays under 64 MiB
MAX_ERR = 64 << 10
_libc = ctypes.CDLL(None, use_errno=True)


class Job:
    """One command: its process, its pipes (while open) and what it said."""

    __slots__ = ("deadline", "err", "fds", "id", "killed", "out", "pid", "status", "why")

    def __init__(self, job_id: int, deadline: float) -> None:
        self.id = job_id
        self.deadline = deadline
        self.pid = 0
        self.killed = False
        self.fds: dict[int, str] = {}  # open read ends: "out", "err" or "setup"
        self.out, self.err = bytearray(), bytearray()
        self.status: int | None = None  # os.waitstatus_to_exitcode once reaped
        self.why = ""

    @property
    def done(self) -> bool:
        return self.status is not None and not self.fds

    def answer(self) -> bytes:
        body = {
            "id": self.id, "rc": self.status, "why": self.why,
            "out": self.out.decode(errors="replace"), "err": self.err[-MAX_ERR:].decode(errors="replace"),
        }  # fmt: skip
        return json.dumps(body).encode() + b"\n"

    def kill(self, why: str) -> None:
        """Kill its process group (the command and whatever it started), unless it was reaped:
        its pid could be another process's by then."""
        if self.status is None and not self.killed:
            self.why, self.killed = self.why or why, True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


class Request:
    """A request line, checked."""

    def __init__(self, raw: dict[str, object]) -> None:
        self.id = int(str(raw["id"]))
        argv = raw.get("argv")
        self.argv = [str(a) for a in argv] if isinstance(argv, list) else []
        self.capture = bool(raw.get("capture"))
        nofile, hide, stdio = raw.get("nofile"), raw.get("hide"), raw.get("stdio")
        self.nofile = nofile if isinstance(nofile, int) and nofile > 0 else None
        self.hide = hide if isinstance(hide, str) and hide else None
        self.stdio = stdio if isinstance(stdio, str) and stdio else None
        passed = raw.get("pass")
        self.passed = [str(p) for p in passed] if isinstance(passed, list) else []
        self.timeout = float(str(raw.get("timeout") or 60.0))


def runtime_env() -> dict[str, str]:
    """The runtime's whole environment: PATH (runc's and crun's here, runsc's in gvisor.py).
    Nothing of the agent's (its settings, an EnvironmentFile's secrets), and above all no
    NOTIFY_SOCKET: runc and crun take it as the container's, bind its socket into the sandbox
    and wait for the container's READY=1, so an agent started by a service manager that sets it
    had every create hang for 120 s, then fail (session 13)."""
    return {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def _child(req: Request, out_w: int, err_w: int, setup_w: int) -> None:
    """In the forked child: set up, exec. Never returns; a failed step is written to
    ``setup_w`` (close-on-exec: the spawner reads end of file once the exec succeeded)."""
    step = "setsid"
    try:
        os.setsid()
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # as subprocess leaves them for its children
        if req.hide is not None:
            step = "unshare"
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
            # Moved out of the way, not unmounted: an umount waits for an RCU grace period
            # (~7 ms of wall time at load 11), a move does not (0.04 ms); not covered either:
            # crun finds cgroup2 in mountinfo and would make the sandbox's cgroup in it
            # (docs/benchmarks.md, "Session 12").
            if _libc.mount(req.hide.encode(), HIDE_TO, None, MS_MOVE, None) != 0:
                _libc.umount2(req.hide.encode(), MNT_DETACH)  # no place to move it to
        if req.nofile is not None:
            step = "setrlimit"
            resource.setrlimit(resource.RLIMIT_NOFILE, (req.nofile, req.nofile))
        step = "stdio"
        if req.stdio is not None:  # never the host's /dev/null: the runtime may chown it
            null = os.open(req.stdio, os.O_TMPFILE | os.O_RDWR, 0o600)
        else:
            null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_w if out_w >= 0 else null, 1)
        os.dup2(err_w if err_w >= 0 else null, 2)
        keep = 3 + len(req.passed)
        if req.passed:
            step = "pass"
            setup_w = _above(setup_w, keep)  # out of the way of fds 3, 4, ...
            opened = [_above(os.open(p, os.O_WRONLY | os.O_CLOEXEC), keep) for p in req.passed]
            for i, fd in enumerate(opened):
                os.dup2(fd, 3 + i)  # inheritable
        os.closerange(keep, setup_w)
        os.closerange(setup_w + 1, 1 << 20)
        step = "exec"
        os.execvpe(req.argv[0], req.argv, runtime_env())  # noqa: S606 (no shell: that is the point)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.write(setup_w, f"{step}: {e}".encode()[:1000])
    os._exit(127)


def _above(fd: int, low: int) -> int:
    """``fd`` moved to a number >= ``low`` (close-on-exec)."""
    if fd >= low:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return new


def start(req: Request) -> Job:
    """Fork the request's command; the job answers at once when it cannot run at all."""
    job = Job(req.id, time.monotonic() + req.timeout)
    if not req.argv:
        job.status, job.why = 127, "no argv"
        return job
    pipes = [os.pipe() for _ in range(3 if req.capture else 1)]
    setup_w = pipes[-1][1]  # os.pipe's ends are close-on-exec
    out_w = pipes[0][1] if len(pipes) == 3 else -1
    err_w = pipes[1][1] if len(pipes) == 3 else -1
    try:
        pid = os.fork()
    except OSError as e:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        job.status, job.why = 127, f"fork: {e}"
        return job
    if pid == 0:
        _child(req, out_w, err_w, setup_w)
    job.pid = pid
    for (r, w), name in zip(pipes, ("out", "err", "setup") if len(pipes) == 3 else ("setup",), strict=True):
        os.close(w)
        os.set_blocking(r, False)
        job.fds[r] = name
    return job


def _read(job: Job, fd: int) -> None:
    """Take what ``fd`` has; at end of file, close it."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return
    name = job.fds[fd]
    if not data:
        os.close(fd)
        del job.fds[fd]
        return
    if name == "setup":
        job.why = data.decode(errors="replace")
    elif name == "err":
        job.err += data
        del job.err[:-MAX_ERR]
    else:
        job.out += data
        if len(job.out) > MAX_OUT:
            job.kill(f"output over {MAX_OUT} bytes")
            del job.out[MAX_OUT:]


def _reap(jobs: dict[int, Job]) -> None:
    by_pid = {j.pid: j for j in jobs.values() if j.status is None and j.pid}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if (job := by_pid.get(pid)) is not None:
            job.status = os.waitstatus_to_exitcode(status)


def _expire(jobs: dict[int, Job], now: float) -> None:
    for job in jobs.values():
        if now > job.deadline and job.status is None:
            job.kill("timed out")
        elif now > job.deadline + 5 and job.fds:  # reaped, yet something else holds its pipes
            for fd in list(job.fds):
                os.close(fd)
            job.fds.clear()


def _next_check(job: Job) -> float:
    """When a job needs looking at without news from it (a killed one: its SIGCHLD will come)."""
    return job.deadline + (5 if job.status is not None else 0)


def _handle(line: bytes, jobs: dict[int, Job]) -> None:
    try:
        req = json.loads(line)
        if "kill" in req:
            if (job := jobs.get(int(req["kill"]))) is not None:
                job.kill("killed")
            return
        job = start(Request(req))
    except (ValueError, KeyError, TypeError) as e:
        os.write(2, f"oci_spawner: bad request {line[:200]!r}: {e}\n".encode())
        return
    jobs[job.id] = job


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is the agent's to handle
    with contextlib.suppress(OSError):  # without it, hiding unmounts (slower, same effect)
        os.makedirs(HIDE_TO, mode=0o700, exist_ok=True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)  # SIGCHLD wakes the select below
    jobs: dict[int, Job] = {}
    buf = b""
    while True:
        fds = {fd: job for job in jobs.values() for fd in job.fds}
        deadlines = [_next_check(j) for j in jobs.values() if not (j.killed and j.status is None)]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable = select.select([0, wake_r, *fds], [], [], timeout)[0]
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        for fd in readable:
            if fd in fds:
                _read(fds[fd], fd)
        _reap(jobs)
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                return  # the agent is gone
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                _handle(line, jobs)
            _reap(jobs)
        _expire(jobs, time.monotonic())
        out = b"".join(jobs.pop(i).answer() for i in [i for i, j in jobs.items() if j.done])
        while out:
            out = out[os.write(1, out) :]


if __name__ == "__main__":
    main()
