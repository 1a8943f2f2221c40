"""A uvicorn server on a free loopback port in a thread of the test process, for the unit tests
of the CP's protocol classes (cp/connection_guard.py, cp/http_writes.py, cp/ws_guard.py): the
real server, no platform."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from tests.harness.machine import free_port

START_TIMEOUT_S = 30


@contextlib.contextmanager
def serving(app: Any, **config: Any) -> Iterator[int]:
    """``app`` served by uvicorn with ``config`` (protocol classes, timeouts) on 127.0.0.1: its
    port, until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
