"""`warren cp --workers N` whose workers cannot start: the command fails as soon as the first
worker has (not after uvicorn's 30 s health check), exit 3, with the worker's error printed once
(not once per worker) and no worker left behind (cli/cp_workers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness.machine import free_port

# The command's own deadline: three workers importing the control plane on a loaded machine.
DEADLINE_S = 300


def _cp(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    env |= {"WARREN_DATABASE_URL": database_url, "WARREN_JWT_SECRET": "w" * 40, "WARREN_HOME": str(tmp_path)}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the command's own temporary files go
    return subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "cp", "--port", str(free_port()), "--e2b-port", "0", *args],
        env=env, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip


def test_workers_that_fail_at_start_up_fail_the_command_with_one_error(tmp_path: Path) -> None:
    # A database URL no driver takes: each worker's start-up fails (the parent's migrations,
    # which would fail first, are off). Two workers show "once, not once per worker" as well as
    # three did, for two thirds of the processes importing the control plane.
    res = _cp(tmp_path, "nosuchdriver://u:p@127.0.0.1/db", "--workers", "2", "--no-migrate")
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    assert "The control plane workers failed to start" in res.stderr, out
    assert out.count("Can't load plugin: sqlalchemy.dialects:nosuchdriver") == 1, out
    assert out.count("Application startup failed") == 1, out
    assert "Application startup complete" not in out, out
    assert not list((tmp_path / "tmp").glob("warren-cp-*")), "the command left its temporary dir"


def test_an_unreachable_database_fails_before_any_worker(tmp_path: Path) -> None:
    """With migrations on (the default) the parent reaches the database first: exit 1, no worker."""
    res = _cp(tmp_path, f"postgresql://u:p@127.0.0.1:{free_port()}/db", "--workers", "2")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Connect call failed" in out or "Connection refused" in out, out
    assert "Started server process" not in out, out
