"""Contexts: one Jupyter kernel each (``jupyter_client`` + ``ipykernel``), Python only.

One execution at a time per context (a lock; Jupyter queues them the same way). An execution
is a generator of NDJSON events (``outputs``); the server writes each as it comes and, when its
client goes away, interrupts the kernel and drains the rest, so the next execution starts clean.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from warren.interpreter import outputs

log = logging.getLogger("warren.interpreter")

MAX_CONTEXTS = 16  # each is a kernel process (~60 MB)
START_TIMEOUT_S = 60.0
POLL_S = 1.0  # how often a quiet execution checks that its kernel is alive
REPLY_TIMEOUT_S = 10.0
MAX_ENV = 256
MAX_ENV_BYTES = 64 << 10
LANGUAGES = ("python", "python3")
_DIED = "the kernel died and was started again: its state is lost"


class InterpreterError(Exception):
    """A request the server refuses: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_language(language: str | None) -> str:
    if language is None or language.lower() in LANGUAGES:
        return "python"
    raise InterpreterError(
        400, f"language {language[:64]!r} is not supported: Warren's code interpreter runs Python only"
    )


def check_env(env: Any) -> dict[str, str]:
    """``env_vars`` of an execution: a flat object of strings, bounded."""
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise InterpreterError(400, "env_vars must be an object of strings")
    if len(env) > MAX_ENV or sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise InterpreterError(400, f"env_vars: at most {MAX_ENV} variables and {MAX_ENV_BYTES} bytes")
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise InterpreterError(400, f"env_vars: invalid variable name or value {k[:64]!r}")
    return env


class Context:
    """A Jupyter kernel started in ``cwd``."""

    def __init__(self, cwd: str, runtime_dir: str) -> None:
        self.id = uuid.uuid4().hex
        self.language = "python"
        self.cwd = cwd
        self.lock = threading.Lock()  # held by the execution (or restart) in progress
        self.closed = False
        self.generation = 0  # moved by each restart: an execution of an older kernel ends
        # Unix sockets in a 0700 directory: only this user reaches the kernel (TCP on loopback
        # would be open to every account in the sandbox, guarded by the HMAC key alone).
        self._km = KernelManager(
            kernel_name="python3", transport="ipc", ip=os.path.join(runtime_dir, f"kernel-{self.id}")
        )
        self._kc: BlockingKernelClient | None = None

    def view(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    def start(self) -> None:
        self._km.start_kernel(cwd=self.cwd)
        self._connect()

    def _connect(self) -> None:
        kc = self._km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=START_TIMEOUT_S)
        except Exception:
            kc.stop_channels()
            raise
        self._kc = kc

    def _disconnect(self) -> None:
        if self._kc is not None:
            self._kc.stop_channels()
            self._kc = None

    def interrupt(self) -> None:
        try:
            self._km.interrupt_kernel()
        except Exception as e:  # the kernel may be gone already
            log.info("event=interrupt_failed context=%s error=%s", self.id, e)

    def restart(self) -> None:
        """A fresh kernel in the same cwd; an execution in progress is interrupted first."""
        self.interrupt()
        calm = self.lock.acquire(timeout=REPLY_TIMEOUT_S)
        if not calm:
            # A wedged execution: kill its kernel; it ends at its next poll (generation moved).
            self.generation += 1
            self._km.restart_kernel(now=True)
            self.lock.acquire()
        try:
            if calm:
                self._km.restart_kernel(now=True)
            self._reconnect()
        finally:
            self.lock.release()

    def _reconnect(self) -> None:
        self.generation += 1
        self._disconnect()
        self._connect()

    def shutdown(self) -> None:
        self.closed = True
        self.interrupt()
        try:
            self._km.shutdown_kernel(now=True)
        finally:
            # An execution in progress ends at its next poll (closed); its channels go after it.
            if self.lock.acquire(timeout=REPLY_TIMEOUT_S):
                try:
                    self._disconnect()
                finally:
                    self.lock.release()

    def execute(
        self, code: str, env: dict[str, str], gone: Callable[[], bool] = lambda: False
    ) -> Iterator[outputs.Event]:
        """Run ``code``; the caller holds :attr:`lock`. Yields the execution's events, then ends
        (``end_of_execution`` is the server's to write). ``gone`` is asked while the kernel is
        quiet: once it says the client went away, the kernel is interrupted."""
        if self.closed or self._kc is None:
            raise InterpreterError(404, f"context {self.id} is gone")
        if not self._km.is_alive():
            self._revive()  # it died after its last execution
        return self._run(code, env, gone)

    def _run(self, code: str, env: dict[str, str], gone: Callable[[], bool]) -> Iterator[outputs.Event]:
        kc = self._kc
        if kc is None:
            raise InterpreterError(500, f"context {self.id} has no kernel: restart it")
        outcome = "idle"
        if env:
            self._silent(kc, _set_env(env))
        try:
            msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
            outcome = yield from self._follow(kc, msg_id, gone)
            if outcome == "idle":
                self._reply(kc, msg_id)
        finally:
            if outcome == "dead":
                self._revive()
            elif env and outcome == "idle":
                self._silent(kc, _RESTORE_ENV)

    def _follow(
        self, kc: BlockingKernelClient, msg_id: str, gone: Callable[[], bool]
    ) -> Generator[outputs.Event, None, str]:
        """The execution's events until its kernel is ``idle``, ``dead``, or ``replaced`` (the
        context was restarted or removed meanwhile)."""
        generation, interrupted = self.generation, False
        while True:
            try:
                msg: dict[str, Any] = kc.get_iopub_msg(timeout=POLL_S)
            except queue.Empty:
                if not interrupted and gone():
                    self.interrupt()
                    interrupted = True
                if self.closed or self.generation != generation:
                    yield outputs.error("ContextRestarted", "the context was restarted or removed", [])
                    return "replaced"
                if not self._km.is_alive():
                    yield outputs.error(
                        "KernelDied", "the kernel died and was restarted: its state is lost", []
                    )
                    return "dead"
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue  # an earlier, abandoned execution's or a silent one's
            kind = msg["header"]["msg_type"]
            if kind == "status" and msg["content"].get("execution_state") == "idle":
                return "idle"
            event = outputs.from_iopub(msg)
            if event is not None:
                yield event

    def _revive(self) -> None:
        """A kernel that died (``os._exit``, the OOM killer) is started again, as Jupyter does."""
        log.info("event=kernel_died context=%s", self.id)
        try:
            self._km.restart_kernel(now=True)
            self._reconnect()
        except Exception as e:
            log.warning("event=kernel_restart_failed context=%s error=%s", self.id, e)

    def _reply(self, kc: BlockingKernelClient, msg_id: str) -> None:
        """Take the execution's shell reply off the channel (so replies never pile up)."""
        while True:
            try:
                msg: dict[str, Any] = kc.get_shell_msg(timeout=REPLY_TIMEOUT_S)
            except queue.Empty:
                return
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return

    def _silent(self, kc: BlockingKernelClient, code: str) -> None:
        msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        self._reply(kc, msg_id)


# Per-execution environment: set before the cell and put back after it, inside the kernel.
_SAVE_ENV = "__warren_saved_env__"
_RESTORE_ENV = f"""
import os as __warren_os__
for __k__, __v__ in globals().pop({_SAVE_ENV!r}, {{}}).items():
    if __v__ is None:
        __warren_os__.environ.pop(__k__, None)
    else:
        __warren_os__.environ[__k__] = __v__
"""


def _set_env(env: dict[str, str]) -> str:
    literal = json.dumps(env)  # a JSON object of strings is a Python dict literal
    return (
        "import os as __warren_os__\n"
        f"{_SAVE_ENV} = {{k: __warren_os__.environ.get(k) for k in {literal}}}\n"
        f"__warren_os__.environ.update({literal})\n"
    )


class Contexts:
    """The server's contexts: at most ``max_contexts``, one of them the default Python one that
    an execution without ``context_id`` uses (made again if it was removed)."""

    def __init__(self, default_cwd: str, max_contexts: int = MAX_CONTEXTS) -> None:
        self.default_cwd = default_cwd
        self.max_contexts = max_contexts
        self._lock = threading.Lock()
        self._items: dict[str, Context] = {}
        self._starting = 0
        self._default_id: str | None = None
        self._default_lock = threading.Lock()  # one default made at a time
        self.runtime_dir = tempfile.mkdtemp(prefix="warren-interpreter-")  # 0700

    def create(self, language: str | None = None, cwd: str | None = None) -> Context:
        check_language(language)
        cwd = cwd or self.default_cwd
        if not os.path.isabs(cwd) or len(cwd) > 4096 or "\0" in cwd:
            raise InterpreterError(400, "cwd must be an absolute path")
        if not os.path.isdir(cwd):
            raise InterpreterError(400, f"cwd {cwd[:256]!r} is not a directory")
        with self._lock:
            if len(self._items) + self._starting >= self.max_contexts:
                raise InterpreterError(429, f"at most {self.max_contexts} contexts: remove one first")
            self._starting += 1
        ctx = Context(cwd, self.runtime_dir)
        try:
            ctx.start()
        except Exception as e:
            log.exception("event=context_start_failed")
            with self._lock:
                self._starting -= 1
            with_cleanup(ctx)
            raise InterpreterError(500, f"the kernel did not start: {e}") from e
        with self._lock:
            self._starting -= 1
            self._items[ctx.id] = ctx
        return ctx

    def default(self) -> Context:
        with self._default_lock:
            with self._lock:
                ctx = self._items.get(self._default_id or "")
            if ctx is None:
                ctx = self.create()
                self._default_id = ctx.id
            return ctx

    def ready(self) -> bool:
        """Whether the default context has been up (removing it later does not make the
        server unready: the next execution makes it again)."""
        return self._default_id is not None

    def get(self, context_id: str) -> Context:
        with self._lock:
            ctx = self._items.get(context_id)
        if ctx is None:
            raise InterpreterError(404, f"context {context_id[:64]!r} not found")
        return ctx

    def list(self) -> list[Context]:
        with self._lock:
            return list(self._items.values())

    def remove(self, context_id: str) -> None:
        with self._lock:
            ctx = self._items.pop(context_id, None)
        if ctx is None:
            raise InterpreterError(404, f"context {context_id[:64]!r} not found")
        ctx.shutdown()

    def close(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), {}
        for ctx in items:
            with_cleanup(ctx)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def with_cleanup(ctx: Context) -> None:
    """Shut ``ctx`` down, whatever state it is in (at exit, or after a failed start)."""
    try:
        ctx.shutdown()
    except Exception as e:
        log.info("event=context_shutdown_failed context=%s error=%s", ctx.id, e)
