"""The guest process itself: the listening socket, request dispatch, signals, reaping, exit.

As PID 1 of the sandbox it reaps every orphan, forwards SIGTERM to the processes it started
and exits when they are gone (or after ``--term-grace`` seconds).
"""

# ruff: noqa: SIM105

import _signal
import _socket
import os
import time
from _collections import deque

from . import process
from .conn import Conn
from .loop import EPOLLIN, Loop
from .process import SIGKILL, OomScore, Proc, SendStdinOp, SessionOp
from .protocol import K_RESULT, UMASK, VERSION, GuestFail, jdump, log, req_selector

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .conn import Op


# What each client connection's socket may hold of the guest's output (the kernel doubles it):
# queued there, it is charged to the sender, the guest's own cgroup, whatever the client reads.
# The default (wmem_default, 208 KiB: ~240 KiB a connection charged) had 32 unread terminal
# clients' sockets hold 6.8 MiB of the guest's 24 MiB reserve, now 2.1 (session 18); one exec's
# output and one download through the guest were as fast (alternated runs, ~110-145 MiB/s).
SNDBUF = 32 << 10


KEEP_EXITED = 64  # exited background processes kept for `list_processes` / `attach`


SIGCHLD: int = _signal.SIGCHLD


SIGTERM: int = _signal.SIGTERM


SIGINT: int = _signal.SIGINT


class Guest:
    umask = UMASK

    def __init__(self, socket_path: str, term_grace: float) -> None:
        self.path = socket_path
        self.term_grace = term_grace
        self.loop = Loop()
        self.procs: dict[int, Proc] = {}
        self.ptys: dict[int, Any] = {}  # pid -> pty.Pty (terminals, loaded on first use)
        self.exited_bg: deque[int] = deque()
        self.is_init = os.getpid() == 1
        self.stopping = False
        self.orphans_reaped = 0
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # A warm-pool member (docs/agent.md, "Warm pools") takes its sandbox's environment with
        # one `claim`, accepted only before any other operation than `health`: once claimed, or
        # once anything ran, the environment is the sandbox's for good.
        self.pristine = True
        self.sigdef = {s for s in (getattr(_signal, n, None) for n in ("SIGPIPE", "SIGXFSZ")) if s}
        self.oom = OomScore()
        os.umask(Guest.umask)
        os.chdir("/")

        # Signals arrive as bytes on a pipe (set_wakeup_fd) so the epoll loop handles them
        # synchronously; the Python-level handlers are no-ops. A handler (not SIG_DFL) matters
        # for PID 1: the kernel drops default-action signals sent to a namespace's init.
        self.sig_r, sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(sig_w, False)
        _signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        for s in (SIGCHLD, SIGTERM, SIGINT, _signal.SIGHUP):
            _signal.signal(s, _noop)
        self.loop.watch(self.sig_r, EPOLLIN, self.on_signal)

        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        d = os.path.dirname(socket_path)
        if d:
            os.makedirs(d, exist_ok=True)
        self.lsock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
        # Bind under a temporary name and rename once listening: the path then only ever
        # appears ready, so a client never sees ECONNREFUSED in the bind-to-listen window.
        tmp = f"{socket_path}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        self.lsock.bind(tmp)
        self.lsock.listen(512)
        os.rename(tmp, socket_path)
        self.loop.watch(self.lsock.fileno(), EPOLLIN, self.on_accept)
        self.reap()  # children could predate us (exec'd into place by a wrapper)

    def on_accept(self, ev: int) -> None:
        for _ in range(64):
            try:
                fd, _addr = self.lsock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and friends: log and keep serving the connections we have.
                log(f"accept failed: {e}")
                return
            sock = _socket.socket(fileno=fd)
            sock.setblocking(False)
            try:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, SNDBUF)
            except OSError:
                pass
            Conn(self, sock)

    def start_op(self, conn: "Conn", req: "dict[str, Any]") -> "Op | None":
        op = req.get("op")
        if op == "health":
            conn.send(K_RESULT, jdump({"ok": True, "pid": os.getpid(), "version": VERSION}))
            conn.finish()
            return None
        if op == "claim":
            self.claim(conn, req)
            return None
        self.pristine = False
        if op == "exec":
            if self.stopping:
                raise GuestFail("unavailable", "the sandbox is shutting down")
            proc = Proc(self, req)
            return SessionOp(conn, proc, owner=True, replay=False)
        if op == "attach":
            return SessionOp(conn, self.select(req), owner=False, replay=True)
        if op == "list_processes":
            procs = sorted(self.procs.values(), key=lambda p: p.started)
            conn.send(K_RESULT, jdump({"processes": [p.info() for p in procs]}))
            conn.finish()
            return None
        if op == "signal":
            p = self.select(req)
            sig = req.get("signal")
            if not isinstance(sig, int) or not 0 < sig < 65:
                raise GuestFail("invalid_argument", "signal must be an integer in 1..64")
            if not p.running:
                raise GuestFail("not_found", f"process {p.pid} has already exited")
            p.killpg(sig)
            return self._done(conn)
        if op == "send_stdin":
            return SendStdinOp(conn, self.select(req))
        if isinstance(op, str) and op.startswith("pty_"):
            from . import pty  # loaded on first use, like files

            return pty.start_op(self, conn, op, req)
        if op == "close_stdin":
            self.select(req).close_stdin()
            return self._done(conn)
        if op == "watch":
            from . import watch  # on first use, like files

            return watch.start_op(conn, req)
        # Anything else is a file operation (or unknown). Imported on first use: a sandbox's
        # start (health, then the first exec) does not pay for loading it.
        from . import files

        return files.start_op(conn, op, req)

    def claim(self, conn: "Conn", req: "dict[str, Any]") -> None:
        env = req.get("env")
        if not self.pristine:
            raise GuestFail("invalid_argument", "claim: this guest is in use already")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise GuestFail("invalid_argument", "claim: env must map strings to strings")
        self.pristine = False
        self.base_env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
        self._done(conn)

    @staticmethod
    def _done(conn: "Conn") -> None:
        conn.send(K_RESULT, b"{}")
        conn.finish()

    def select(self, req: "dict[str, Any]") -> "Proc":
        sel = req_selector(req)
        if isinstance(sel, int):
            p = self.procs.get(sel)
            if p is None:
                raise GuestFail("not_found", f"no process with pid {sel}")
            return p
        cands = [p for p in self.procs.values() if p.tag == sel]
        if not cands:
            raise GuestFail("not_found", f"no process with tag {sel!r}")
        # Prefer the running one; else the most recent that exited.
        return max(cands, key=lambda p: (p.running, p.started))

    def retire(self, p: "Proc") -> None:
        if not p.background:
            self.procs.pop(p.pid, None)
            return
        self.exited_bg.append(p.pid)
        while len(self.exited_bg) > KEEP_EXITED:
            old = self.exited_bg.popleft()
            q = self.procs.get(old)
            if q is not None and q.finished:
                del self.procs[old]

    # signals and reaping

    def on_signal(self, ev: int) -> None:
        try:
            data = os.read(self.sig_r, 512)
        except BlockingIOError:
            return
        if SIGCHLD in data:
            self.reap()
        if SIGTERM in data or SIGINT in data:
            self.stop()

    def reap(self) -> None:
        # waitpid(-1) collects both our own children and orphans re-parented to us (as PID 1).
        # We are the only caller of waitpid in this process, so our children's statuses are
        # never consumed elsewhere; a pid not in our table is an orphan and is simply dropped.
        no_children = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                no_children = True
                break
            if pid == 0:
                break
            p = self.procs.get(pid) or self.ptys.get(pid)
            if p is not None and p.exit_code is None:
                p.on_exit(status)
            else:
                self.orphans_reaped += 1
        # As init, only "no children at all" means the sandbox is empty; otherwise our own
        # processes are all that SIGTERM was forwarded to.
        if self.stopping and (
            no_children
            or (not self.is_init and not any(p.running for p in [*self.procs.values(), *self.ptys.values()]))
        ):
            self.exit()

    def stop(self) -> None:
        """SIGTERM: pass it on to every process, give them a grace period, then SIGKILL."""
        if self.stopping:
            self._kill_all(SIGKILL)
            self.exit()
            return
        self.stopping = True
        # Refuse new clients outright (ENOENT / ECONNREFUSED) instead of leaving them queued.
        self.loop.unwatch(self.lsock.fileno())
        self.lsock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self._kill_all(SIGTERM)
        self.loop.call_later(self.term_grace, self._final_kill)
        self.reap()

    def _kill_all(self, sig: int) -> None:
        if self.is_init:
            try:
                os.kill(-1, sig)  # as a namespace's init: every process in the sandbox but us
            except ProcessLookupError:
                pass
        else:
            for p in [*self.procs.values(), *self.ptys.values()]:
                if p.running:
                    p.killpg(sig)

    def _final_kill(self) -> None:
        self._kill_all(SIGKILL)
        self.exit()

    def exit(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os._exit(0)

    def serve(self) -> None:
        while True:
            try:
                self.loop.run_once()
            except Exception as e:  # PID 1 must survive anything a request can provoke
                log(f"loop error: {e!r}")
                time.sleep(0.01)


def _noop(signum: int, frame: object) -> None:
    pass


def _ensure_stdio() -> None:
    # Pipes created later must never land on fds 0-2, or the dup2 file actions would clobber
    # them; runc may start us with any of them closed.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # Our stderr (log lines only; children get their own pipes) may be a pipe nobody drains:
    # a full pipe must drop log lines, never block PID 1.
    try:
        os.set_blocking(2, False)
    except OSError:
        pass


def _cgroup_fds(spec: str) -> "tuple[int, ...]":
    """The descriptors ``--cmds-cgroup-fds`` names that are what the agent passed (a cgroup's
    ``cgroup.procs``), close-on-exec from now on; any other is left alone (a runtime that
    passed none: the guest's commands stay in the sandbox's own cgroup)."""
    fds = []
    for part in spec.split(","):
        try:
            fd = int(part)
            if fd > 2 and os.readlink(f"/proc/self/fd/{fd}").endswith("/cgroup.procs"):
                os.set_inheritable(fd, False)
                fds.append(fd)
                continue
        except (ValueError, OSError):
            pass
        log(f"no cgroup descriptor {part!r}: commands stay in the sandbox's cgroup")
    return tuple(fds)


def main(argv: "list[str]") -> int:
    socket_path = "/run/warren/guest.sock"
    term_grace = 3.0
    tcp_port = 0
    secret_file = ""
    memory_limit_file = ""
    max_processes = 0
    cgroup_fds = ""
    it = iter(argv)
    for a in it:
        if a == "--tcp":  # gVisor: also listen on TCP, secret first (tcp.py)
            tcp_port = int(next(it, "0"))
        elif a == "--secret-file":
            secret_file = next(it, "")
        elif a == "--memory-limit-file":  # gVisor: enforce the memory limit inside (memwatch.py)
            memory_limit_file = next(it, "")
        elif a == "--max-processes":  # the sandbox's pids.max: each command's RLIMIT_NPROC below it
            max_processes = int(next(it, "0"))
        elif a == "--cmds-cgroup-fds":  # runc/crun: the cmds cgroup's cgroup.procs (OomScore)
            cgroup_fds = next(it, "")
        elif a == "--socket":
            socket_path = next(it, socket_path)
        elif a.startswith("--socket="):
            socket_path = a.split("=", 1)[1]
        elif a == "--term-grace":
            term_grace = float(next(it, "3"))
        elif a in ("-h", "--help"):
            os.write(1, b"usage: guest.py [--socket PATH] [--term-grace SECONDS]\n")
            return 0
        else:
            log(f"unknown argument {a!r}")
            return 2
    _ensure_stdio()
    guest = Guest(socket_path, term_grace)
    guest.oom = OomScore(max_processes)
    process.cmds_fds = _cgroup_fds(cgroup_fds)
    if tcp_port:
        from . import tcp

        tcp.listen(guest, tcp_port, secret_file)
    if memory_limit_file:
        from . import memwatch

        memwatch.start(memory_limit_file)
    guest.serve()
    return 0
