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

import e2b
import httpx
import pytest

from tests.harness import tether
from tests.harness.cp import PASSWORD
from tests.harness.machine import free_port, minimal_cache_env, scratch_dir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the local agent needs root (namespaces, cgroups, overlayfs)"
    ),
    pytest.mark.timeout(300),
]


def _start(
    home: Path, port: int, log: Path, *, build_base: bool = False, e2b_port: int | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "WARREN_DATABASE_URL"}
    env.update(minimal_cache_env())
    if build_base:  # the test harness turns it off everywhere else
        env["WARREN_BUILD_BASE_TEMPLATE"] = "1"
    with open(log, "ab") as out:
        return tether.popen(  # a killed test run leaves no `warren up` behind
            [sys.executable, "-m", "warren.cli.main", "up", "--home", str(home), "--port", str(port),
             "--e2b-port", str(e2b_port or free_port())],
            env=env, stdout=out, stderr=out, start_new_session=True,
            death_signal=signal.SIGTERM,
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
    root = scratch_dir("hosts")
    try:
        yield root / "home"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _registered_local_agent_serves(http: httpx.Client, home: Path, email: str) -> str:
    """An admin's view of a first start: one online local host, at 127.0.0.1, that creates a
    sandbox of the default template. The host's id."""
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
    r = http.post("/v1/sandboxes", json={}, headers=auth)
    assert r.status_code == 201, r.text
    assert http.delete(f"/v1/sandboxes/{r.json()['id']}", headers=auth).status_code == 204
    return str(hosts[0]["id"])


def _base_serves(http: httpx.Client, proc: subprocess.Popen[bytes], log: Path, e2b_port: int) -> None:
    """`base`, built in the background, runs as `user` in its home with the tools the template
    promises, for a user who is no admin; E2B's SDK, unchanged, gets it as its default template."""
    r = http.post("/v1/auth/signup", json={"email": "base@example.com", "password": PASSWORD, "name": "B"})
    assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    deadline = time.monotonic() + 1000
    while (r := http.get("/v1/templates/base", headers=auth)).status_code == 404:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(2)
    assert r.status_code == 200, r.text
    version = r.json()["versions"][0]
    assert version["source"] == "build" and version["config"]["user"] == "user", version
    r = http.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    script = "whoami; pwd; id -u; python --version; git --version; curl --version | head -1; cc --version"
    r = http.post(
        f"/v1/sandboxes/{sid}/exec", json={"cmd": "/bin/bash", "args": ["-c", script]}, headers=auth
    )
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    lines = r.json()["stdout"].splitlines()
    assert lines[:3] == ["user", "/home/user", "1000"], lines
    assert lines[3].startswith("Python 3") and lines[4].startswith("git version"), lines
    assert http.delete(f"/v1/sandboxes/{sid}", headers=auth).status_code == 204
    key = http.post("/v1/api-keys", json={"name": "e2b"}, headers=auth).json()["key"]
    e2b_url = f"http://127.0.0.1:{e2b_port}"
    sbx = e2b.Sandbox.create(api_key=key, api_url=e2b_url, sandbox_url=e2b_url)
    try:
        r2 = sbx.commands.run("whoami; pwd")
        assert r2.stdout.splitlines() == ["user", "/home/user"] and r2.exit_code == 0
    finally:
        assert sbx.kill()


# One test, two starts: the first start's claims (a registered local agent; `base` built in the
# background) share it, as each start is ~10-20 s of PostgreSQL, the CP and the agent.
@pytest.mark.timeout(1200)
def test_warren_up_runs_a_registered_local_agent_and_builds_the_base_template(home: Path) -> None:
    """`warren up` registers a local agent with its own control plane and builds `base` from
    the packaged Warrenfile in the background (apt reaches Debian's mirror, as the `minimal`
    debootstrap does). A second start reuses the agent's saved credentials (same host)."""
    home.mkdir(mode=0o755)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home.parent / "up.log"
    e2b_port = free_port()
    email = "owner@example.com"
    proc = _start(home, port, log, build_base=True, e2b_port=e2b_port)
    try:
        _wait_up(proc, url, log)
        with httpx.Client(base_url=url, timeout=60) as http:
            host_id = _registered_local_agent_serves(http, home, email)
            _base_serves(http, proc, log, e2b_port)
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
