"""Processes: spawning commands, their output and stdin, timeouts, signals and attach.

A :class:`Proc` is one command the guest started (forked, users.fork_exec, in its own process group).
Its owner session (``exec``) and any ``attach`` subscribers get its events; background ones
keep recent output in a ring for late attaches.
"""

# ruff: noqa: SIM105

import _signal
import _stat
import os
import resource
import time
from _collections import deque

from .conn import LOW_WATER, Op
from .lag import cut_if_behind
from .loop import EPOLLIN, EPOLLOUT, Loop
from .protocol import (
    K_DATA,
    K_END,
    K_SIGNAL,
    K_STDERR,
    K_STDOUT,
    READ_CHUNK,
    GuestFail,
    req_str,
)
from .stream import InputOp, Streamed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .conn import Conn
    from .server import Guest
    from .users import User


RING_BYTES = 1 << 20  # recent output kept per background process for late `attach`
# The guest's own memory (charged above `cmds`, within its 24 MiB: agent/runtime/cmds_cgroup.py)
# bounds what every ring together may cost, each chunk counted with its Python objects (a
# command printing a byte at a time cost the guest ~124 bytes a byte, session 17): all running
# processes' rings together RINGS_TOTAL (over it, the process that printed gives up its oldest);
# an exited one keeps its last EXITED_RING (server.KEEP_EXITED of them: ~4 MiB). Before, 64
# exited processes' 1 MiB rings, which no OOM kill frees, took a 128 MiB sandbox's guest
# (test_attack_session17_guest_rings).
RINGS_TOTAL = 8 << 20
EXITED_RING = 64 << 10
CHUNK_COST = 160  # a (kind, bytes) tuple in a deque, and malloc's share: measured ~124
_rings = [0]  # what the running processes' rings cost together


# `attach` subscribers at a time, to one process and to all of a sandbox's, as for terminals
# (pty.MAX_CLIENTS, MAX_CLIENTS_ALL): each holds socket buffers of the guest's own besides what
# lag.py lets it queue; the rest are refused ``too_large`` (RESOURCE_EXHAUSTED, 413 at the CP).
MAX_ATTACH = 16
MAX_ATTACH_ALL = 32


EXIT_GRACE = 0.1  # wait this long after exit for pipe EOF (a grandchild may hold the pipes)


DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


SIGKILL: int = _signal.SIGKILL


def which(cmd: str, path_var: str) -> str:
    if "/" in cmd:
        return cmd
    for d in path_var.split(":"):
        cand = os.path.join(d or ".", cmd)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if _stat.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
            return cand
    raise GuestFail("not_found", f"command not found: {cmd}")


def _checked_request(
    guest: "Guest", req: "dict[str, Any]"
) -> "tuple[str, list[str], dict[str, str], Any, str]":
    """An exec request's fields, type-checked: cmd, args, env, timeout, tag."""
    cmd = req_str(req, "cmd")
    if not cmd:
        raise GuestFail("invalid_argument", "cmd must not be empty")
    args = req.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise GuestFail("invalid_argument", "args must be a list of strings")
    env_req = req.get("env") or {}
    if not isinstance(env_req, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_req.items()
    ):
        raise GuestFail("invalid_argument", "env must map strings to strings")
    timeout = req.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise GuestFail("invalid_argument", "timeout must be a non-negative number")
    tag = req.get("tag") or ""
    if not isinstance(tag, str):
        raise GuestFail("invalid_argument", "tag must be a string")
    if tag and any(p.tag == tag and p.running for p in guest.procs.values()):
        raise GuestFail("exists", f"a running process already has tag {tag!r}")
    return cmd, args, env_req, timeout, tag


def _working_dir(cwd: object, env: "dict[str, str]") -> str:
    """The request's cwd, or the command's HOME when it exists, else /."""
    if cwd is None:
        home = env.get("HOME", "/")
        return home if os.path.isdir(home) else "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise GuestFail("invalid_argument", f"cwd must be an absolute path: {cwd!r}")
    return cwd


def _identity(user: "User | None") -> "dict[str, str]":
    """What a login as ``user`` sets: HOME, USER and LOGNAME (nothing for the default, root)."""
    if user is None:
        return {}
    return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name}


class Proc(Streamed):
    pid: int
    tag: str
    exit_code: "int | None"
    started: float

    def __init__(self, guest: "Guest", req: "dict[str, Any]") -> None:
        self.g = guest
        cmd, args, env_req, timeout, tag = _checked_request(guest, req)
        self.user: User | None = None
        if req.get("user"):
            # Loaded on first use: the default (root) path never pays for it.
            from .users import resolve

            self.user = resolve(req)
        env = {**DEFAULT_ENV, **guest.base_env, **_identity(self.user), **env_req}
        cwd = _working_dir(req.get("cwd"), env)
        exe = which(cmd, env.get("PATH", DEFAULT_ENV["PATH"]))
        self._init_state(cmd, args, tag, background=bool(req.get("background")))
        # A background command whose requester asked for backpressure waits for that one reader
        # as a foreground command does (E2B's Start); attachers are still cut off.
        self.owner_waits = not self.background or req.get("backpressure") is True
        out_r, err_r, in_w = self._spawn(exe, cmd, args, env, cwd, want_stdin=bool(req.get("stdin")))
        self.started = time.time()
        self._watch(out_r, err_r, in_w, timeout)
        guest.procs[self.pid] = self

    def _init_state(self, cmd: str, args: "list[str]", tag: str, background: bool) -> None:
        self.cmd, self.args, self.tag = cmd, list(args), tag
        self.background = background
        self.owner_waits = not background  # whether the requesting client is waited for
        self.subs: list[Conn] = []
        self.owner: Conn | None = None
        self.ring: deque[tuple[int, bytes]] = deque()
        self.ring_size = 0
        self.exit_code: int | None = None
        self.timed_out = False
        self.finished = False
        self.paused = False
        self.inbuf = bytearray()
        self.stdin_close_pending = False
        self.in_waiters: list[Conn] = []
        self.grace: list[Any] | None = None

    def _spawn(
        self, exe: str, cmd: str, args: "list[str]", env: "dict[str, str]", cwd: str, want_stdin: bool
    ) -> "tuple[int, int, int]":
        """Start the command on fresh pipes; returns our ends (stdout, stderr, stdin or -1)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if want_stdin else (-1, -1)
        try:
            # fork, not posix_spawn, for root too: only a forked child can give itself the
            # children's oom_score_adj before anything of it runs (OomScore).
            self.pid = self._spawn_as_user(exe, [cmd, *args], env, cwd, (in_r, out_w, err_w))
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd >= 0:
                    os.close(fd)
        return out_r, err_r, in_w

    def _spawn_as_user(
        self, exe: str, argv: "list[str]", env: "dict[str, str]", cwd: str, fds: "tuple[int, int, int]"
    ) -> int:
        # fork, drop to the user (None: stay root), exec (users.py).
        from .users import spawn_as

        if any("\0" in a for a in (exe, cwd, *argv, *env, *env.values())):
            raise GuestFail("invalid_argument", "embedded null byte")  # as posix_spawn's ValueError
        guest = self.g
        return spawn_as(self.user, exe, argv, env, cwd, fds, guest.sigdef, guest.oom)

    def _watch(self, out_r: int, err_r: int, in_w: int, timeout: "float | None") -> None:
        """Our pipe ends into the loop, and the timeout's timer."""
        self.out_fd, self.err_fd, self.in_fd = out_r, err_r, in_w
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        if in_w >= 0:
            os.set_blocking(in_w, False)
        loop = self.g.loop
        loop.watch(out_r, EPOLLIN, self._pipe_cb(out_r, K_STDOUT))
        loop.watch(err_r, EPOLLIN, self._pipe_cb(err_r, K_STDERR))
        self.timer = loop.call_later(float(timeout), self.on_timeout) if timeout else None

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def info(self) -> "dict[str, Any]":
        return {
            "pid": self.pid,
            "tag": self.tag,
            "cmd": self.cmd,
            "args": self.args,
            "running": self.running,
            "exit_code": self.exit_code,
            "background": self.background,
        }

    # output

    def on_pipe(self, fd: int, kind: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
            self.maybe_finish()
            return
        self.publish(kind, data)

    def publish(self, kind: int, data: bytes) -> None:
        if self.background:
            self._keep(kind, data)
        for c in list(self.subs):
            c.send(kind, data)
            # Only a foreground command (or a background one asked to) waits for its own client
            # (below); whoever else lags too far behind it is cut off rather than buffered for.
            cut_if_behind(self, c)
        owner = self.owner
        if owner is not None and self.owner_waits and owner.congested() and not owner.closed:
            # Backpressure: stop reading the pipes; the process blocks on write like under any
            # slow reader, and memory stays bounded. Resume when the client catches up.
            self._set_paused(True)
            owner.on_drain = lambda: self._set_paused(False)

    def subscribe(self, c: "Conn", replay: bool) -> None:
        if c is not self.owner and not self.finished:
            if self.attached() >= MAX_ATTACH:
                raise GuestFail("too_large", f"at most {MAX_ATTACH} attach connections to a process")
            if sum(p.attached() for p in self.g.procs.values()) >= MAX_ATTACH_ALL:
                raise GuestFail("too_large", f"at most {MAX_ATTACH_ALL} attach connections in a sandbox")
        super().subscribe(c, replay)  # the replay of the ring counts as lag too
        if c in self.subs:
            cut_if_behind(self, c)

    def attached(self) -> int:
        """Its ``attach`` subscribers (the owner, exec's own client, is not one)."""
        return len(self.subs) - (self.owner in self.subs)

    def waits_for(self, c: "Conn") -> bool:
        """An attach subscriber is cut off when it lags (lag.py); the owner of a foreground
        command (or a background one asked to) is waited for instead."""
        return c is self.owner and self.owner_waits

    def _keep(self, kind: int, data: bytes) -> None:
        """``data`` into the ring, within RING_BYTES and the guest's RINGS_TOTAL."""
        self.ring.append((kind, data))
        cost = len(data) + CHUNK_COST
        self.ring_size += cost
        if not self.finished:
            _rings[0] += cost
        while self.ring and (
            (self.ring_size > RING_BYTES and len(self.ring) > 1)
            or (not self.finished and _rings[0] > RINGS_TOTAL)
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        cost = len(self.ring.popleft()[1]) + CHUNK_COST
        self.ring_size -= cost
        if not self.finished:
            _rings[0] -= cost

    def _set_paused(self, paused: bool) -> None:
        if self.paused == paused:
            return
        self.paused = paused
        for fd, kind in ((self.out_fd, K_STDOUT), (self.err_fd, K_STDERR)):
            if fd < 0:
                continue
            if paused:
                self.g.loop.unwatch(fd)
            else:
                self.g.loop.watch(fd, EPOLLIN, self._pipe_cb(fd, kind))

    def _pipe_cb(self, fd: int, kind: int) -> "Callable[[int], None]":
        return lambda ev: self.on_pipe(fd, kind)

    def _close_pipe(self, fd: int) -> None:
        self.g.loop.unwatch(fd)
        os.close(fd)
        if fd == self.out_fd:
            self.out_fd = -1
        elif fd == self.err_fd:
            self.err_fd = -1

    def _drain_pipes(self) -> None:
        for fd, kind in ((self.out_fd, K_STDOUT), (self.err_fd, K_STDERR)):
            while fd >= 0:
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                self.publish(kind, data)
            if fd >= 0:
                self._close_pipe(fd)

    # lifecycle

    def on_timeout(self) -> None:
        self.timer = None
        if self.running:
            self.timed_out = True
            self.killpg(SIGKILL)

    def killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(self.pid, sig)  # the group is gone but the leader may not be reaped yet
            except ProcessLookupError:
                pass

    def on_exit(self, status: int) -> None:
        self.exit_code = os.waitstatus_to_exitcode(status)
        Loop.cancel(self.timer)
        self.timer = None
        self.maybe_finish()
        if not self.finished:
            self.grace = self.g.loop.call_later(EXIT_GRACE, self.on_grace)

    def on_grace(self) -> None:
        self.grace = None
        if self.finished:
            return
        if self.paused:  # a slow client, not a lingering grandchild: keep waiting for it
            self.grace = self.g.loop.call_later(EXIT_GRACE, self.on_grace)
            return
        # A grandchild still holds the output pipes; report the exit anyway.
        self._drain_pipes()
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.finished or self.exit_code is None or self.out_fd >= 0 or self.err_fd >= 0:
            return
        while self.ring_size > EXITED_RING and len(self.ring) > 1:
            self._drop_oldest()
        _rings[0] -= self.ring_size  # kept now among the exited (server.KEEP_EXITED)
        self.finished = True
        Loop.cancel(self.grace)
        self._close_stdin_fd()
        self._end_subscribers()
        self.owner = None
        self.g.retire(self)

    def exit_fields(self) -> "dict[str, Any]":
        if self.timed_out:
            return {"timed_out": True, "error": "timed out; process group killed"}
        return {"timed_out": False}

    def replay(self) -> "Iterable[tuple[int, bytes]]":
        return self.ring

    def unsubscribe(self, c: "Conn") -> None:
        if c in self.subs:
            self.subs.remove(c)
        if c in self.in_waiters:
            self.in_waiters.remove(c)
        if c is self.owner:
            self.owner = None
            if not self.background and self.running:
                # A foreground command dies with its client; background ones outlive it.
                self.killpg(SIGKILL)
            self._set_paused(False)

    # stdin

    def feed(self, data: bytes, conn: "Conn") -> None:
        if self.in_fd < 0 or self.stdin_close_pending:
            raise GuestFail("invalid_argument", "stdin is closed (or was never opened)")
        self._take_input(data, conn)

    def close_stdin(self) -> None:
        if self.in_fd < 0:
            return
        self.stdin_close_pending = True
        self._flush_input()

    def _flush_input(self) -> None:
        if self.in_fd < 0:
            return
        if not self._write_input(self.in_fd):  # EPIPE: the process closed its stdin
            self._close_stdin_fd()
            return
        if self.inbuf:
            self.g.loop.watch(self.in_fd, EPOLLOUT, lambda ev: self._flush_input())
        else:
            self.g.loop.unwatch(self.in_fd)
            if self.stdin_close_pending:
                self._close_stdin_fd()
        if len(self.inbuf) < LOW_WATER:
            self._wake_input()

    def _close_stdin_fd(self) -> None:
        if self.in_fd >= 0:
            self.g.loop.unwatch(self.in_fd)
            os.close(self.in_fd)
            self.in_fd = -1
        self.inbuf.clear()
        self._wake_input()


def parse_signal(payload: bytes) -> int:
    try:
        sig = int(payload.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise GuestFail("invalid_argument", "signal must be an ASCII decimal number") from e
    if not 0 < sig < 65:
        raise GuestFail("invalid_argument", f"invalid signal {sig}")
    return sig


class SessionOp(Op):
    """exec and attach: events stream out; stdin data, stdin EOF and signals stream in."""

    def __init__(self, conn: "Conn", proc: "Proc", owner: bool, replay: bool) -> None:
        super().__init__(conn)
        self.proc = proc
        if owner:
            proc.owner = conn
        proc.subscribe(conn, replay)

    def on_frame(self, kind: int, payload: bytes) -> None:
        p = self.proc
        if kind == K_DATA:
            try:
                p.feed(payload, self.conn)
            except GuestFail:
                if p.running:
                    raise
                # Late stdin to a process that already exited is not worth failing the stream.
        elif kind == K_END:
            p.close_stdin()
        elif kind == K_SIGNAL:
            if p.running:
                p.killpg(parse_signal(payload))
        else:
            super().on_frame(kind, payload)

    def on_close(self) -> None:
        self.proc.unsubscribe(self.conn)


class SendStdinOp(InputOp):
    def __init__(self, conn: "Conn", proc: "Proc") -> None:
        _check_running(proc)
        if proc.in_fd < 0 or proc.stdin_close_pending:
            raise GuestFail("invalid_argument", f"process {proc.pid} has no open stdin")
        super().__init__(conn, proc)
        self.proc = proc

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == K_DATA:
            _check_running(self.proc)  # it exited while this op was open
        super().on_frame(kind, payload)


def _check_running(proc: "Proc") -> None:
    # Its own kind, told apart from a running process without stdin: E2B answers it not found
    # (envd removed the process), and it says so as data (the agent's warren-guest-kind).
    if not proc.running:
        raise GuestFail("exited", f"process {proc.pid} has exited: it takes no input")


# The agent's descriptors on the cmds cgroup's cgroup.procs (memory, pids; agent/runtime/
# cmds_cgroup.py), close-on-exec; none in a gVisor sandbox. Set once by server.main
# (here, not in users.py: this module is imported at startup anyway).
cmds_fds: "tuple[int, ...]" = ()


def enter_cmds() -> None:
    """In a forked child, first: into the cmds cgroup, below the sandbox's that holds the guest
    alone ("0": this process), and the descriptors closed (nothing after holds them)."""
    for fd in cmds_fds:
        try:
            os.write(fd, b"0")
        except OSError:
            pass  # left in the sandbox's own cgroup, as before cmds
        try:
            os.close(fd)
        except OSError:
            pass


class OomScore:
    """Children start at oom_score_adj 1000, so that the sandbox's OOM killer always takes one
    of them before the guest, whose death (PID 1) is the sandbox's. The guest's own score never
    moves: it used to be raised around each spawn for the child to inherit, and the spawn's own
    charges (the fork, the exec) in a sandbox held at its limit by small processes had the OOM
    killer take the guest, the largest at 1000 (session 15, test_attack_session15_guest_oom).
    Every command is therefore forked (users.fork_exec), and the child sets its own first
    (:meth:`in_child`). Not posix_spawn and a write from the guest after it: ``sh -c "... &"``
    forked before that write at its first try, and its fillers at the guest's 0 had the guest,
    the largest of them, killed. In a runc/crun sandbox the agent sets the guest's floor
    (oom_score_adj_min) at 1000 under its own 0 (agent/runtime/guest_oom.py): the children
    inherit the floor and can never lower themselves to the guest's score (session 16).

    The child also takes ``RLIMIT_NPROC`` a little below the sandbox's ``pids.max``
    (``max_processes``, the guest's ``--max-processes``): a fork bomb as one user (``nobody``, each
    child in a session of its own) took every process of the sandbox, and the guest could fork
    no command again, root's ``kill`` included, until the sandbox was destroyed (session 16,
    test_attack_session16_pids). The kernel counts it per user and no one in the sandbox may raise
    it, so one user alone never holds the last ``reserve`` processes.

    In a runc/crun sandbox the child first moves itself into the ``cmds`` cgroup (memory and
    pids) below the sandbox's, which holds the guest alone (agent/runtime/cmds_cgroup.py):
    :func:`enter_cmds`, before anything else. The OOM killer then chooses among the tenant's
    processes when they reach their room, and they can never take the guest's last processes,
    whatever score or users they have (session 17, test_attack_session17_guest_cgroup)."""

    CHILD = b"1000"

    def __init__(self, max_processes: int = 0) -> None:
        self.nproc = max_processes - self.reserve(max_processes) if max_processes > 0 else 0

    @staticmethod
    def reserve(max_processes: int) -> int:
        """The processes no one user may take: enough for root to run a command or two."""
        return min(64, max(4, max_processes // 8))

    def in_child(self) -> None:
        """In a forked child, before anything else: its own /proc/self, not the guest's."""
        enter_cmds()
        if self.nproc > 0:
            try:
                resource.setrlimit(resource.RLIMIT_NPROC, (self.nproc, self.nproc))
            except (OSError, ValueError):
                pass  # a lower limit already (raising one is not ours to do)
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return  # no /proc: it keeps the guest's value
        try:
            os.write(fd, self.CHILD)
        except OSError:
            pass
        finally:
            os.close(fd)
