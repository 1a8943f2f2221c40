"""`warren cp --workers N`: the worker processes' supervisor and their app factory.

uvicorn's supervisor learns that a worker died only when a health ping goes unanswered: a worker
that died while pinged (a start-up failure: a bad setting, a database URL no driver takes) cost
the whole ``timeout_worker_healthcheck`` (30 s here) before the command gave up, and each of the
N workers printed the same error. Here the ping also ends when the worker's process does (its
sentinel), so the command fails as soon as the first worker has, and only the first worker to
fail at start-up logs its errors: the others' would repeat it N - 1 times.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from multiprocessing.connection import wait
from pathlib import Path
from socket import socket
from typing import Any

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")

# The file the first worker that fails at start-up creates (O_EXCL): it alone logs its errors.
REPORTER_ENV = "WARREN_CP_STARTUP_REPORTER"
FACTORY = "warren.cli.cp_workers:worker_app"


class _Worker(Process):
    def _healthcheck(self, timeout: float) -> bool | None:
        """The ping's answer, or None once the process has exited (uvicorn's waits out the
        whole timeout when the worker dies while pinged)."""
        try:
            self.parent_conn.send(b"ping")
            ready = wait([self.parent_conn, self.process.sentinel], timeout)
            if self.parent_conn not in ready:
                return None
            started: bool = self.parent_conn.recv()
            return started
        except (OSError, EOFError, ValueError):
            return None


class _Supervisor(Multiprocess):
    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            process = _Worker(self.config, self.sockets)
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, with workers of the class above."""
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung, or already gone
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # It would fail the same way on every restart: the command stops.
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info("Child process [%s] died", process.pid)
            process = _Worker(self.config, self.sockets)
            process.start()
            self.processes[idx] = process


def serve(config: Config, sockets: list[socket]) -> bool:
    """Run the workers until the command is stopped; False when one failed at start-up."""
    report_dir = tempfile.mkdtemp(prefix="warren-cp-")
    os.environ[REPORTER_ENV] = str(Path(report_dir) / "reporter")  # inherited by the workers
    try:
        supervisor = _Supervisor(config, sockets)
        supervisor.run()
    finally:
        os.environ.pop(REPORTER_ENV, None)
        shutil.rmtree(report_dir, ignore_errors=True)
    return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)


class _FirstFailureOnly(logging.Filter):
    """Until its app has started, a worker's errors pass only if it is the first to have any."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._mine: bool | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if self._mine is None:
            try:
                os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                self._mine = True
            except FileExistsError:
                self._mine = False
            except OSError:
                self._mine = True  # cannot tell: better twice than never
        return self._mine


def worker_app() -> Any:
    """A worker's app (uvicorn calls this in each worker): the control plane's, with the filter
    above on uvicorn's error log until the app's start-up completes."""
    from warren.cp.app import create_server_app

    path = os.environ.get(REPORTER_ENV)
    if not path:
        return create_server_app()
    only_first = _FirstFailureOnly(path)
    logger.addFilter(only_first)
    app = create_server_app()

    async def started_unfiltered(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def watch(message: Any) -> None:
            if message.get("type") == "lifespan.startup.complete":
                logger.removeFilter(only_first)
            await send(message)

        return await app(scope, receive, watch)

    return started_unfiltered
