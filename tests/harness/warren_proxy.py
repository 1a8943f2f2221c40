"""``warren proxy`` as a process of its own beside a platform's CP: the preview proxy alone, on
the platform's database and home (docs/networking.md §3). Ends with the test process however
that ends (:mod:`tests.harness.tether`)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness import tether
from tests.harness.machine import free_port
from tests.harness.platform import Platform

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class ProxyProcess:
    url: str
    pid: int
    log: Path


@contextlib.contextmanager
def running_proxy(
    platform: Platform, *, env: dict[str, str] | None = None, stop_wait_s: float = 30
) -> Iterator[ProxyProcess]:
    """``warren proxy`` with the CP's environment plus ``env``, once it answers ``/healthz``.
    Stopped with SIGTERM; past ``stop_wait_s`` (its graceful stop waits for the relays it
    still holds) killed."""
    port = free_port()
    log_path = platform.cp.home / f"warren-proxy-{port}.log"
    argv = [sys.executable, "-m", "warren.cli.main", "proxy", "--listen", f"127.0.0.1:{port}"]
    with open(log_path, "ab") as log:
        proc = tether.popen(
            argv, env={**platform.cp.env(), **(env or {})}, stdout=log, stderr=log, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, url, log_path)
        yield ProxyProcess(url, proc.pid, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(stop_wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"warren proxy exited:\n{log_path.read_text()[-4000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        assert time.monotonic() < deadline, "warren proxy did not start"
        time.sleep(0.1)
