"""warren/agent/preflight.py, through ``warren doctor``: a failing check is a FAIL line and exit 1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.machine import scratch_dir
from warren.agent import preflight

pytestmark = pytest.mark.root


@pytest.fixture
def root() -> Iterator[Path]:
    d = scratch_dir("preflight")
    yield d
    for m in d.glob("*/"):  # the tmpfs a test mounted (a plain dir: umount fails, harmlessly)
        subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


def tmpfs(at: Path, options: str) -> Path:
    at.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(at)], check=True)
    return at


def by_name(checks: list[preflight.Check]) -> dict[str, preflight.Check]:
    return {c.name: c for c in checks}


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warren.cli.main", "doctor", "--metrics-listen", "0", *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_this_machine_passes(root: Path) -> None:
    """The test machine runs agents: every kernel, cgroup, runtime and data dir check is ok."""
    checks = preflight.run(
        preflight.Target(data_dir=root / "agent", listen="127.0.0.1:0", metrics_listen="0")
    )
    assert preflight.failed(checks) == [], checks
    names = set(by_name(checks))
    assert {"namespaces", "overlay", "veth", "iptables", "ip6tables", "cgroups", "runc", "data_dir",
            "disk_free", "overlay_upper", "listen", "clock", "ipv6", "sandbox_network"} <= names  # fmt: skip


def test_a_full_filesystem_fails_and_exits_1(root: Path) -> None:
    full = tmpfs(root / "full", "size=1m")
    done = doctor("--data-dir", str(full / "agent"), "--listen", "127.0.0.1:0")
    assert done.returncode == 1, done.stdout
    line = next(line for line in done.stdout.splitlines() if "disk_free" in line)
    assert line.startswith("FAIL") and "below 2 GiB" in line
    assert "fix: free space or choose --data-dir on a larger filesystem" in done.stdout


def test_a_read_only_filesystem_fails(root: Path) -> None:
    ro = tmpfs(root / "ro", "ro,size=64m")
    checks = by_name(
        preflight.run(preflight.Target(data_dir=ro / "agent", listen="127.0.0.1:0", metrics_listen="0"))
    )
    assert checks["data_dir_writable"].status == "fail"
    assert "read-only" in checks["data_dir_writable"].detail
    assert checks["data_dir"].status == "fail"  # cannot be made there either


def test_a_data_dir_others_may_write_fails(root: Path) -> None:
    d = root / "agent"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    check = by_name(preflight.run(preflight.Target(data_dir=d, listen="127.0.0.1:0", metrics_listen="0")))[
        "data_dir"
    ]
    assert check.status == "fail" and check.fix == f"chmod 0711 {d}"


def test_a_busy_port_fails_in_json_too(root: Path) -> None:
    """The agent's config file says where it listens: the doctor reads it too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        config = root / "agent.toml"
        config.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{root / "agent"}"\n')
        done = doctor("--config", str(config), "--json")
    assert done.returncode == 1
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["listen"]["status"] == "fail" and "Address already in use" in checks["listen"]["detail"]
    assert [c["name"] for c in json.loads(done.stdout) if c["status"] == "fail"] == ["listen"]
