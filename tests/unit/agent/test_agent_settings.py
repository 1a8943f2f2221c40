"""AgentSettings: every variable the agent reads, its default, and a clear stop on a bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warren.agent.settings import AgentSettings, load_settings

NAMES = (
    "WARREN_AGENT_CREATE_CONCURRENCY", "WARREN_AGENT_METRICS_INTERVAL", "WARREN_AGENT_NET_POOL",
    "WARREN_AGENT_MAX_OPEN_FILES", "WARREN_AGENT_MAX_EXEC_OUTPUT", "WARREN_AGENT_MAX_PROCESSES",
    "WARREN_AGENT_EGRESS_DENY", "WARREN_MINIMAL_DIR", "WARREN_DEBIAN_MIRROR",
    "WARREN_HEARTBEAT_INTERVAL_S", "WARREN_LOG_LEVEL",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = load_settings()
    assert s.create_limit() == 2 * len(os.sched_getaffinity(0))
    assert (s.metrics_interval, s.net_pool, s.max_open_files) == (5.0, 4, 4096)
    assert (s.max_exec_output, s.max_processes, s.egress_deny) == (16 << 20, 1024, "")
    assert (s.minimal_dir, s.debian_mirror) == (None, "http://deb.debian.org/debian")
    assert (s.heartbeat_interval_s, s.log_level) == (30.0, "INFO")


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = dict(zip(NAMES, ("0", "1.5", "2", "128", "4096", "64", "10.9.0.0/16", "/m", "http://mirror",
                              "0.5", "DEBUG"), strict=True))  # fmt: skip
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.create_limit() == 0  # no limit
    assert (s.metrics_interval, s.net_pool, s.max_open_files, s.max_exec_output) == (1.5, 2, 128, 4096)
    assert (s.max_processes, s.egress_deny, s.minimal_dir) == (64, "10.9.0.0/16", Path("/m"))
    assert (s.debian_mirror, s.heartbeat_interval_s, s.log_level) == ("http://mirror", 0.5, "DEBUG")


def test_empty_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_AGENT_CREATE_CONCURRENCY", "")
    monkeypatch.setenv("WARREN_AGENT_MAX_EXEC_OUTPUT", "")
    s = load_settings()
    assert s.create_concurrency is None and s.max_exec_output == 16 << 20


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WARREN_AGENT_CREATE_CONCURRENCY", "-1"), ("WARREN_AGENT_CREATE_CONCURRENCY", "many"),
        ("WARREN_AGENT_MAX_EXEC_OUTPUT", "0"), ("WARREN_AGENT_MAX_OPEN_FILES", "8"),
        ("WARREN_AGENT_MAX_PROCESSES", "1"), ("WARREN_AGENT_METRICS_INTERVAL", "soon"),
        ("WARREN_HEARTBEAT_INTERVAL_S", "0"),
    ],
)  # fmt: skip
def test_a_bad_value_stops_the_agent_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"{name}='{value}'"):
        load_settings()


def test_the_process_limit_reaches_the_bundle(tmp_path: Path) -> None:
    from warren.agent.create import BuildLimits, SandboxBuilder
    from warren.agent.manager import SandboxManager
    from warren.agent.runtime.base import Runtime

    runtime = Runtime.__new__(Runtime)  # type: ignore[type-abstract]
    runtime.name = "runc"
    m = SandboxManager(tmp_path, runtime, settings=AgentSettings(max_processes=77))
    builder: SandboxBuilder = m._builder
    assert builder.limits == BuildLimits(max_open_files=4096, max_processes=77)
