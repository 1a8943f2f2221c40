"""The rules of a sandbox's host-side filesystem that need no container to check: the disk's
size against its memory, the bundle's mounts and limits, private files, the host-size refusal."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from warren.agent import sandbox_fs
from warren.agent.create import MAX_MEMORY_MB, MAX_VCPUS
from warren.agent.manager import SandboxManager
from warren.agent.runtime.base import Runtime
from warren.agent.runtime.bundle import BundleSpec, oci_config
from warren.agent.settings import AgentSettings, load_settings
from warren.errors import InvalidRequest


@pytest.mark.parametrize("memory_mb", [64, 128, 512, 4096])
def test_a_full_disk_and_its_inodes_leave_the_headroom_free(memory_mb: int) -> None:
    d = sandbox_fs.disk_size(memory_mb, 1 << 20)
    used = (d.mb << 20) + d.inodes * sandbox_fs.INODE_COST_BYTES
    assert used + (sandbox_fs.PROCESS_HEADROOM_MB << 20) <= memory_mb << 20
    assert d.inodes * sandbox_fs.BYTES_PER_INODE <= (d.mb << 20) or d.inodes == 256
    assert sandbox_fs.disk_size(memory_mb, 16).mb == 16  # a smaller request is kept
    assert sandbox_fs.disk_size(128, 5120).mb == 76


def spec(tmp: Path) -> BundleSpec:
    return BundleSpec(
        sandbox_id="sb-x", rootfs=tmp / "rootfs", guest_dir=Path("/g"), run_dir=tmp / "run",
        netns_path="/run/netns/warren-s3", hostname="sb-x", vcpus=1, memory_mb=128,
        identity_dir=tmp / "disk/etc", shm_dir=tmp / "disk/shm", max_open_files=4096,
    )  # fmt: skip


def test_every_mount_of_a_host_path_or_tmpfs_is_nosuid_and_nodev(tmp_path: Path) -> None:
    cfg = oci_config(spec(tmp_path))
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    for dest, m in mounts.items():
        if m["type"] in ("bind", "tmpfs"):
            assert "nosuid" in m["options"], dest
            assert "nodev" in m["options"] or dest == "/dev", dest
    for name in ("hostname", "hosts", "resolv.conf"):
        assert mounts[f"/etc/{name}"]["source"] == str(tmp_path / "disk/etc" / name)
    assert mounts["/dev/shm"]["source"] == str(tmp_path / "disk/shm")
    assert any(o.startswith("size=") for o in mounts["/dev"]["options"])


def test_the_guest_gets_a_pinned_oom_score_and_the_file_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = oci_config(spec(tmp_path))["process"]
    assert proc["oomScoreAdj"] == 0
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
    monkeypatch.setenv("WARREN_AGENT_MAX_OPEN_FILES", "1024")
    assert load_settings().max_open_files == 1024
    for bad in ("8", "lots"):
        monkeypatch.setenv("WARREN_AGENT_MAX_OPEN_FILES", bad)
        with pytest.raises(SystemExit, match="WARREN_AGENT_MAX_OPEN_FILES"):
            load_settings()


def test_private_files_are_born_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "record.json"
        path.write_text("old")
        path.chmod(0o644)
        sandbox_fs.write_private(path, '{"env": {"KEY": "secret"}}')
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "secret" in path.read_text()
    assert sorted(os.listdir(tmp_path)) == ["record.json"]


async def test_no_sandbox_larger_than_the_host(tmp_path: Path) -> None:
    # Refused before anything is made: the runtime is never reached.
    runtime = Runtime.__new__(Runtime)  # type: ignore[type-abstract]  # never called
    runtime.name = "runc"
    m = SandboxManager(tmp_path, runtime, settings=AgentSettings(create_concurrency=0))
    bad: list[dict[str, Any]] = [
        {"memory_mb": MAX_MEMORY_MB + 1}, {"vcpus": MAX_VCPUS + 1}, {"memory_mb": 32}, {"disk_size_mb": 8},
    ]  # fmt: skip
    for kw in bad:
        with pytest.raises(InvalidRequest):
            await m.create(**kw)
    assert not (tmp_path / "sandboxes").exists()
