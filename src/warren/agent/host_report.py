"""What this agent tells the control plane about itself with each heartbeat: the body the CP
reads as ``cp/services/host_link.py:HostReport``, each key stored in the ``hosts`` column of the
same name. One key per feature, added by the feature: the runtimes this host offers, its warm
pools, its data disk's free space."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warren.agent.main import AgentHandle


def host_report(handle: AgentHandle) -> dict[str, Any]:
    """The heartbeat body, built fresh for each beat (cheap: no subprocess, no RPC)."""
    report: dict[str, Any] = {}
    report["disk_free_bytes"] = disk_free_bytes(handle.manager.data_dir)
    report["runtimes"] = handle.manager.runtimes.offered()
    # What a create that names no runtime runs on here (the CP's default is "the host's").
    report["default_runtime"] = handle.manager.runtimes.default
    report["warm_pools"] = handle.manager.warm_pools.report()
    return report


# What the probe writes: one page, so a disk with no free block (or no free inode) fails it.
_PROBE = b"\0" * 4096


def disk_free_bytes(data_dir: Path) -> int:
    """The bytes free for the agent in ``data_dir`` (what a non-root writer may use), or 0 when
    it cannot write a small file there (full, out of inodes, read-only, not its own)."""
    probe = data_dir / ".disk-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if os.write(fd, _PROBE) != len(_PROBE):
                return 0
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()
        st = os.statvfs(data_dir)
    except OSError:
        return 0
    return 0 if st.f_favail == 0 else st.f_bavail * st.f_frsize
