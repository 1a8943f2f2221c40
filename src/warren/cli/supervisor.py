"""The small process supervisor behind ``warren up``: named children, started in order, watched,
restarted when their :class:`RestartPolicy` says so, and stopped in reverse order.

Each child leads its own process group, so a terminal's Ctrl-C reaches only the supervisor,
which then stops the children in order; and each child gets a parent-death signal
(:func:`set_pdeathsig`), so even a SIGKILLed supervisor leaves nothing running.

A child with a :class:`RestartPolicy` that dies on its own is started again after a growing
delay (``event=<name>_restarted exit_code=… attempt=…``); after repeated crashes soon after
starting the supervisor gives up on it (``event=<name>_gave_up``) and keeps the rest running.
Any other child dying on its own makes :meth:`Supervisor.wait` return 1.

The children themselves live with the commands that start them (``warren.cli.up``,
``warren.cli.local_agent``); this module knows nothing of Warren's parts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from rich.console import Console

__all__ = [
    "Child",
    "ChildFailed",
    "ProcessChild",
    "RestartPolicy",
    "Stopped",
    "Supervisor",
    "set_pdeathsig",
    "stop_process",
]

# The logger of `warren up`, whose lines (event=agent_restarted …) operators grep for.
log = logging.getLogger("warren.up")
err = Console(stderr=True, highlight=False)

_PR_SET_PDEATHSIG = 1


class Stopped(Exception):
    """Startup was interrupted by SIGINT/SIGTERM."""


class ChildFailed(Exception):
    pass


class Child(Protocol):
    name: str

    def start(self, supervisor: Supervisor) -> None:
        """Start and return once ready; raise ``Stopped`` if the supervisor is stopping."""

    def poll(self) -> int | None:
        """None while running, else its exit code."""

    def stop(self) -> None:
        """Stop it and everything it started; idempotent."""


class RestartPolicy:
    """When to start a crashed child again: after 1, 2, 4 … (at most ``max_delay_s``) seconds;
    never again after ``give_up_after`` crashes in a row that each came within ``fast_s`` of its
    start (a child that ran longer than that starts a fresh count)."""

    def __init__(
        self,
        *,
        give_up_after: int = 5,
        fast_s: float = 60.0,
        base_delay_s: float = 1.0,
        max_delay_s: float = 30.0,
    ) -> None:
        self.give_up_after = give_up_after
        self.fast_s = fast_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.fast_crashes = 0
        self.restarts = 0

    def after_exit(self, ran_s: float) -> float | None:
        """The delay before the next start, or None to give up."""
        self.fast_crashes = self.fast_crashes + 1 if ran_s < self.fast_s else 1
        if self.fast_crashes >= self.give_up_after:
            return None
        self.restarts += 1
        return min(self.max_delay_s, self.base_delay_s * 2 ** (self.fast_crashes - 1))


def set_pdeathsig(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        # If the supervisor dies without stopping us (SIGKILL, OOM), we get `sig`.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class ProcessChild:
    """A child process, ready once ``ready()`` returns True; stopped with ``stop_signal``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 60.0,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self.name = name
        self.restart_policy = restart_policy
        self.argv = argv
        self.env = env
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, supervisor: Supervisor) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the supervisor only; it stops us in order
            preexec_fn=set_pdeathsig(self.stop_signal),
        )
        if self.ready is None:
            return
        deadline = time.monotonic() + self.ready_timeout
        while not self.ready():
            if (code := self.process.poll()) is not None:
                raise ChildFailed(f"{self.name} exited with code {code} while starting")
            if supervisor.stopping.is_set():
                raise Stopped
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} was not ready after {self.ready_timeout:.0f}s")
            supervisor.stopping.wait(0.05)

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, self.name, self.stop_signal, self.stop_timeout)


def stop_process(proc: subprocess.Popen[bytes], name: str, sig: int, timeout: float) -> None:
    """Ask ``proc`` to stop with ``sig``, wait up to ``timeout`` s, then kill its process group
    (whatever it started there goes with it) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()


class Supervisor:
    """Named children started in order, watched, and stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.signal_received: int | None = None
        self.given_up: set[str] = set()  # restartable children left down for good
        self._started_at: dict[str, float] = {}

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.signal_received = signum
            self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)

    def start(self, child: Child) -> None:
        if self.stopping.is_set():
            raise Stopped
        self.children.append(child)  # appended first: a half-started child is stopped too
        t0 = self._started_at[child.name] = time.monotonic()
        child.start(self)
        log.info("%s started in %.2fs", child.name, time.monotonic() - t0)
        if self.stopping.is_set():
            raise Stopped

    def wait(self) -> int:
        """Block until a signal (returns 0) or until a child that is not restarted dies
        (returns 1). Restartable children are restarted here (see :class:`RestartPolicy`)."""
        while not self.stopping.wait(0.25):
            for child in self.children:
                if child.name in self.given_up:
                    continue
                code = child.poll()
                if code is None:
                    continue
                policy: RestartPolicy | None = getattr(child, "restart_policy", None)
                if policy is None:
                    err.print(f"[red]{child.name} exited unexpectedly (code {code}); stopping[/red]")
                    return 1
                self._restart(child, code, policy)
        return 0

    def _restart(self, child: Child, code: int, policy: RestartPolicy) -> None:
        """Start a crashed child again after its policy's delay, or give up on it. A failed
        start is a crash too: the next poll sees it and comes back here."""
        ran = time.monotonic() - self._started_at.get(child.name, 0.0)
        delay = policy.after_exit(ran)
        if delay is None:
            self.given_up.add(child.name)
            log.error(
                "event=%s_gave_up exit_code=%s crashes=%d: it crashed %d times in a row within %.0fs "
                "of starting; not restarting it. Everything else keeps running; see its log above, "
                "then restart warren up",
                child.name, code, policy.fast_crashes, policy.fast_crashes, policy.fast_s,
            )  # fmt: skip
            child.stop()  # whatever it left in its process group goes too
            return
        log.warning(
            "event=%s_restarted exit_code=%s attempt=%d delay_s=%.0f",
            child.name, code, policy.restarts, delay,
        )  # fmt: skip
        child.stop()
        if self.stopping.wait(delay):
            return
        self._started_at[child.name] = time.monotonic()
        try:
            child.start(self)
        except ChildFailed as e:
            log.error("%s: %s", child.name, e)
            return
        log.info("%s restarted in %.2fs", child.name, time.monotonic() - self._started_at[child.name])

    def shutdown(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception:  # one failing child must not keep the others running
                log.exception("stopping %s failed", child.name)
        self.children.clear()
