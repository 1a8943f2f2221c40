"""Fixtures for the agent's integration tests: one real standalone agent process per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.machine import scratch_dir


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, overlayfs, iptables); run the suite as root")


@pytest.fixture(scope="module")
def agent_root() -> Iterator[Path]:
    """A fresh directory for one module's agent(s), removed afterwards."""
    require_root()
    root = scratch_dir("agent")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(agent_root: Path) -> Iterator[AgentProcess]:
    a = AgentProcess.standalone(agent_root / "agent").start()
    try:
        yield a
    finally:
        a.finish()
