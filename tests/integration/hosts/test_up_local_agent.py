"""``warren up`` runs a local host agent registered to its own control plane: a single machine
is a complete platform. A second start reuses the agent's saved credentials (same host)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .agentproc import agent_root, minimal_cache_env
from .cpserver import PASSWORD, free_port

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the local agent needs root (namespaces, cgroups, overlayfs)"
    ),
    pytest.mark.timeout(300),
]


def _start(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "WARREN_DATABASE_URL"}
    env.update(minimal_cache_env())
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", "up", "--home", str(home), "--port", str(port)],
            env=env, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip


def _wait_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        if "Warren is up" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError("warren up did not come up:\n" + log.read_text()[-3000:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def home() -> Iterator[Path]:
    root = agent_root()
    try:
        yield root / "home"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_warren_up_runs_a_registered_local_agent(home: Path) -> None:
    home.mkdir(mode=0o755)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home.parent / "up.log"
    proc = _start(home, port, log)
    try:
        _wait_up(proc, url, log)
        http = httpx.Client(base_url=url, timeout=60)
        email = "owner@example.com"
        r = http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "O"})
        assert r.status_code == 201, r.text
        grant = subprocess.run(
            [sys.executable, "-m", "warren.cli.main", "admin", "grant", email, "--home", str(home)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert grant.returncode == 0, grant.stdout + grant.stderr
        token = http.post("/v1/auth/login", json={"email": email, "password": PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        hosts = http.get("/v1/hosts", headers=auth).json()
        assert len(hosts) == 1 and hosts[0]["status"] == "online" and hosts[0]["type"] == "regular"
        assert hosts[0]["provider"] == "local" and hosts[0]["address"].startswith("127.0.0.1:")
        host_id = hosts[0]["id"]
        r = http.post("/v1/sandboxes", json={}, headers=auth)
        assert r.status_code == 201, r.text
        assert http.delete(f"/v1/sandboxes/{r.json()['id']}", headers=auth).status_code == 204
        http.close()
    finally:
        _stop(proc)

    # Second start: same host, no new registration.
    log = home.parent / "up-again.log"
    proc = _start(home, port, log)
    try:
        _wait_up(proc, url, log)
        with httpx.Client(base_url=url, timeout=60) as http:
            token = http.post("/v1/auth/login", json={"email": email, "password": PASSWORD}).json()["token"]
            hosts = http.get("/v1/hosts", headers={"Authorization": f"Bearer {token}"}).json()
            assert [h["id"] for h in hosts] == [host_id]
            deadline = time.monotonic() + 30
            while hosts[0]["status"] != "online" and time.monotonic() < deadline:
                time.sleep(0.5)
                hosts = http.get("/v1/hosts", headers={"Authorization": f"Bearer {token}"}).json()
            assert hosts[0]["status"] == "online"
    finally:
        _stop(proc)
