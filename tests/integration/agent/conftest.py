"""Fixtures for the agent's integration tests: one real agent process per test module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .agentlib import Agent

BASE = Path("/tmp/warren-agent-tests")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, overlayfs, iptables); run the suite as root")


@pytest.fixture(scope="module")
def agent_root() -> Iterator[Path]:
    """A fresh directory for one module's agent(s), removed afterwards.

    Not pytest's tmp_path: its base dir is 0700 (and other pytest runs reset it to 0700 at any
    moment), while sandbox root — an unprivileged host uid — must traverse down to its rootfs.
    """
    require_root()
    BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=BASE))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(agent_root: Path) -> Iterator[Agent]:
    a = Agent(agent_root / "agent").start()
    try:
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            try:
                a.destroy_all()
            finally:
                a.stop()
