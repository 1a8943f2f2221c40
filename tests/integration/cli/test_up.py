"""``warren up`` end to end: first and later starts, persistence, clean shutdown, no leftovers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from tests.harness import tether
from tests.harness.machine import free_port
from warren.cli.main import app as cli_app

# Three `warren up` starts (PostgreSQL and the CP each time) are heavy: their whole can outlast
# the default 300 s on a loaded machine. They run beside the rest (no shared port or state; the
# serial pass cost CI ~80 s of wall time).
pytestmark = [pytest.mark.timeout(900)]


_NOT_INHERITED = ("WARREN_DATABASE_URL", "WARREN_JWT_SECRET", "WARREN_HOME", "WARREN_PUBLIC_URL")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in _NOT_INHERITED:
        env.pop(k, None)
    return env


def _warren(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "warren.cli.main", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def _warren_here(*args: str) -> subprocess.CompletedProcess[str]:
    """A ``warren`` command in process through typer's CliRunner (the real app, as test_cli.py
    does), with ``_env``'s variables unset: a process of its own pays the CLI's imports (~2-8 s
    on a loaded machine) each time."""
    unset: dict[str, str | None] = dict.fromkeys(_NOT_INHERITED)
    r = CliRunner().invoke(cli_app, list(args), env=unset)
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append((int(d.name), cmd))
    return found


@pytest.fixture
def home() -> Iterator[Path]:
    # 0755: when the suite runs as root, the database runs as the `warren` user and must reach it.
    d = Path(tempfile.mkdtemp(prefix="warren-up-test-"))
    d.chmod(0o755)
    try:
        yield d / "home"
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Up:
    def __init__(self, home: Path, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115
        self.proc = tether.popen(  # a killed test run leaves no `warren up` behind
            # --no-agent: this file is about the database + control plane tree and its timings;
            # the local host agent has its own tests.
            [
                sys.executable,
                "-m",
                "warren.cli.main",
                "up",
                "--no-agent",
                "--port",
                str(port),
                "--e2b-port",
                str(free_port()),
                "--home",
                str(home),
            ],
            env={**_env(), **(env or {})},
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            death_signal=signal.SIGTERM,
        )

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, f"warren up exited early:\n{self.log.read_text()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(120)
        finally:
            self._logf.close()


def _assert_nothing_left(home: Path, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        left = _processes_mentioning(str(home)) + _processes_mentioning(f"--port {port}")
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == [], f"processes left behind: {left}"


def test_warren_up_first_and_second_start_persist_and_stop_cleanly(home: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"

    # First start: initdb, migrations, JWT secret.
    up = Up(home, port, log)
    up.wait_ready(180)
    r = httpx.get(f"{up.url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.json()["info"]["title"] == "Warren"
    creds = {"email": "up@example.com", "password": "correct-horse", "name": "Up Test"}
    r = httpx.post(f"{up.url}/v1/auth/signup", json=creds, timeout=30)
    assert r.status_code == 201, r.text

    # Admin commands reach the database of the running `warren up`.
    res = _warren_here("admin", "grant", "UP@example.com ", "--home", str(home))
    assert res.returncode == 0, res.stderr + res.stdout
    res = _warren_here("admin", "list", "--home", str(home))
    assert "up@example.com" in res.stdout
    res = _warren_here("admin", "grant", "nobody@example.com", "--home", str(home))
    assert res.returncode == 1 and "No account" in res.stderr
    res = _warren_here("migrate", "status", "--check", "--home", str(home))
    assert res.returncode == 0 and "pending  none" in res.stdout

    assert up.stop() == 0
    _assert_nothing_left(home, port)
    assert "Warren is up" in log.read_text()
    secret = home / "jwt-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert (home / "postgres" / "warren-password").stat().st_mode & 0o777 == 0o600

    # Second start (after a clean stop): the data is still there. Then a supervisor killed
    # outright takes its children with it (parent-death signal).
    up = Up(home, port, log)
    up.wait_ready(120)
    r = httpx.post(f"{up.url}/v1/auth/login", json={k: creds[k] for k in ("email", "password")}, timeout=30)
    assert r.status_code == 200, r.text
    up.stop(signal.SIGKILL)
    _assert_nothing_left(home, port)

    # And the cluster it left behind (stale postmaster.pid) starts again, and stops at Ctrl-C.
    up = Up(home, port, log)
    up.wait_ready(120)
    assert up.stop(signal.SIGINT) == 0
    _assert_nothing_left(home, port)

    # Later starts reuse the cluster: one initdb in the three starts' log. (Their seconds are not
    # asserted: a "<= 5 s" bound failed whenever the shared machine was busy.)
    assert log.read_text().count("initdb done in") == 1, log.read_text()


def test_warren_up_with_an_external_database(home: Path, tmp_path: Path, db_url: str) -> None:
    # WARREN_DATABASE_URL set: no embedded PostgreSQL at all, the given database is used.
    port = free_port()
    up = Up(home, port, tmp_path / "up.log", env={"WARREN_DATABASE_URL": db_url})
    up.wait_ready(180)
    creds = {"email": "ext@example.com", "password": "correct-horse", "name": "Ext"}
    assert httpx.post(f"{up.url}/v1/auth/signup", json=creds, timeout=30).status_code == 201
    assert up.stop() == 0
    assert not (home / "postgres").exists()

    async def stored() -> int:
        conn = await asyncpg.connect(make_url(db_url).set(drivername="postgresql").render_as_string(False))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM users WHERE email = 'ext@example.com'"))
        finally:
            await conn.close()

    assert asyncio.run(stored()) == 1  # the account landed in the given database
    _assert_nothing_left(home, port)


def test_port_in_use_is_a_clear_error(home: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _warren("up", "--no-agent", "--port", str(port), "--e2b-port", "0", "--home", str(home))
    assert res.returncode == 1 and "already in use" in res.stderr


def test_cp_requires_database_url_and_secret() -> None:
    res = _warren("cp", "--port", str(free_port()))
    assert res.returncode == 1 and "WARREN_DATABASE_URL" in res.stderr


def test_admin_without_any_database_says_how_to_fix(home: Path) -> None:
    res = _warren("admin", "grant", "x@example.com", "--home", str(home))
    assert res.returncode == 1 and "warren up" in res.stderr


def test_cp_with_several_workers_serves_and_stops_cleanly(tmp_path: Path, db_url: str) -> None:
    """``warren cp --workers 2``: two serving processes on one port, each a full replica."""
    port = free_port()
    env = {**_env(), "WARREN_DATABASE_URL": db_url, "WARREN_JWT_SECRET": "w" * 40,
           "WARREN_HOME": str(tmp_path / "home")}  # fmt: skip
    log = tmp_path / "cp.log"
    with open(log, "ab") as logf:
        proc = tether.popen(
            [sys.executable, "-m", "warren.cli.main", "cp", "--port", str(port), "--workers", "2",
             "--e2b-port", str(free_port())],
            env=env, stdout=logf, stderr=subprocess.STDOUT, death_signal=signal.SIGTERM,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300  # two workers importing the app on a loaded machine
        while log.read_text().count("Application startup complete") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 2, (children, log.read_text())
        creds = {"email": "workers@example.com", "password": "correct-horse", "name": "W"}
        r = httpx.post(f"{url}/v1/auth/signup", json=creds, timeout=30)
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        for _ in range(20):  # a new connection each time
            assert httpx.get(f"{url}/v1/teams", headers=auth, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()
    assert all(not Path(f"/proc/{w}").exists() for w in workers), "workers left running"
    _assert_nothing_left(tmp_path / "home", port)


def test_cp_workers_that_cannot_start_fail_the_command(tmp_path: Path, db_url: str) -> None:
    # A CA that cannot be read fails every worker's start-up: the command must fail too (so a
    # service manager restarts it), not exit 0.
    env = {**_env(), "WARREN_DATABASE_URL": db_url, "WARREN_JWT_SECRET": "w" * 40,
           "WARREN_HOME": str(tmp_path / "home"), "WARREN_CA_CERT": str(tmp_path / "missing.pem"),
           "WARREN_CA_KEY": str(tmp_path / "missing.key")}  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "cp", "--port", str(free_port()), "--workers", "2",
         "--e2b-port", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 3, res.stdout + res.stderr
    assert "failed to start" in res.stderr
