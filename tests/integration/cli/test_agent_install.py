"""``warren agent install --root``: the doctor first, then the config and the unit under the
prefix; nothing started (and it says how to start the agent by hand)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cp import InProcessCP
from tests.harness.machine import free_port, scratch_dir
from warren import config_file

pytestmark = pytest.mark.root

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def root() -> Iterator[Path]:
    d = scratch_dir("agent-install")
    yield d
    subprocess.run(["umount", "-l", str(d / "ro")], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(d)], check=False)


async def install(cp: InProcessCP, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "warren.cli.main", "agent", "install", "--cp", cp.url, *args]
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "WARREN_REGISTRATION_TOKEN": "ab" * 32}
    # In a thread: the CP answering the doctor's clock check runs on this event loop.
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False, env=env
    )


async def test_writes_config_and_unit_under_root(cp: InProcessCP, root: Path) -> None:
    port = free_port()
    done = await install(cp, "--root", str(root / "fs"), "--data-dir", str(root / "agent"),
                         "--listen", f"127.0.0.1:{port}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    config = root / "fs" / "etc" / "warren" / "agent.toml"
    unit = root / "fs" / "etc" / "systemd" / "system" / "warren-agent.service"
    assert f"wrote {config} (0600)\nwrote {unit}\n" in done.stdout
    assert "Not started: --root was given" in done.stdout
    assert f"{VENV_BIN / 'warren'} agent --config /etc/warren/agent.toml" in done.stdout
    st = config.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert config_file.read(config, config_file.agent_keys()) == {
        "cp_url": cp.url, "listen": f"127.0.0.1:{port}", "address": f"127.0.0.1:{port}",
        "data_dir": str(root / "agent"), "runtime": "auto", "registration_token": "ab" * 32,
    }  # fmt: skip
    assert f"ExecStart={VENV_BIN / 'warren'} agent --config /etc/warren/agent.toml\n" in unit.read_text()
    assert not (root / "agent").exists()  # the agent makes its data dir, not the install


async def test_refuses_a_failing_host_and_writes_nothing(cp: InProcessCP, root: Path) -> None:
    ro = root / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    done = await install(cp, "--root", str(root / "fs"), "--data-dir", str(ro / "agent"),
                         "--listen", f"127.0.0.1:{free_port()}")  # fmt: skip
    assert done.returncode == 1
    assert "not ready to be a host; nothing was written" in done.stderr
    assert "FAIL  data_dir_writable" in done.stderr and "read-only" in done.stderr
    assert not (root / "fs").exists()
    assert os.listdir(ro) == []
