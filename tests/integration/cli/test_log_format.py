"""``warren cp --log-format json``: every line the process writes is one JSON object, and a
request's lines carry its X-Request-Id (issue 18 item 2). With the E2B port on too: binding its
socket through a second ``uvicorn.Config`` reset uvicorn's logging to its text format, so its
lines (startup, access) were not JSON (session 38)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness.machine import free_port


def _json_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("e2b", [False, True], ids=["no-e2b-port", "e2b-port"])
def test_cp_logs_json_lines_with_the_request_id(tmp_path: Path, db_url: str, e2b: bool) -> None:
    port, e2b_port = free_port(), free_port() if e2b else 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    env |= {
        "WARREN_DATABASE_URL": db_url,
        "WARREN_JWT_SECRET": "j" * 40,
        "WARREN_HOME": str(tmp_path / "home"),
    }
    log = tmp_path / "cp.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", "cp", "--port", str(port), "--e2b-port", str(e2b_port),
             "--log-format", "json"],
            env=env, stdout=logf, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-Id": "cli-req-1"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-request-id"] == "cli-req-1"
        while not any(line.get("request_id") == "cli-req-1" for line in _json_lines(log)):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
    lines = _json_lines(log)  # every line parses
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines), lines
    access = [line for line in lines if line.get("request_id") == "cli-req-1"]
    assert access[0]["logger"] == "uvicorn.access" and "/healthz" in str(access[0]["message"])
