"""warren/config_file.py: the TOML config files of ``warren agent`` and ``warren cp``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from warren import config_file
from warren.agent.settings import AgentSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_values_by_key_checked_against_their_types(tmp_path: Path) -> None:
    path = write(tmp_path, 'net_pool = 2\nmetrics_interval = 1\nminimal_dir = "/srv/minimal"\n'
                 'runtime = "crun"\ndial_data_tls_on_loopback = true\n')  # fmt: skip
    values = config_file.read(path, config_file.agent_keys())
    assert values == {"net_pool": 2, "metrics_interval": 1, "minimal_dir": "/srv/minimal",
                      "runtime": "crun", "dial_data_tls_on_loopback": True}  # fmt: skip


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "net_pools = 2\n")
    with pytest.raises(
        config_file.ConfigFileError, match=r"agent.toml: unknown key 'net_pools' \(known keys: .*net_pool"
    ):
        config_file.read(path, config_file.agent_keys())


@pytest.mark.parametrize(
    "line",
    ['net_pool = "4"', "net_pool = true", "net_pool = -1", 'runtime = "kata"', 'log_format = "xml"',
     "max_open_files = 8", "[net_pool]\nx = 1", "egress_deny = ['10.0.0.0/8']", "net_pool = 4.5"],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_named(tmp_path: Path, line: str) -> None:
    key = line.split()[0].strip("[]")
    with pytest.raises(config_file.ConfigFileError, match=rf"agent.toml: {key}"):
        config_file.read(write(tmp_path, line + "\n"), config_file.agent_keys())


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(config_file.ConfigFileError, match="not valid TOML"):
        config_file.read(write(tmp_path, "net_pool = \n"), config_file.agent_keys())


def test_the_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = config_file.agent_keys()
    values = config_file.read(
        write(tmp_path, 'net_pool = 2\nmax_processes = 64\nlog_format = "json"\n'), keys
    )
    monkeypatch.setenv("WARREN_AGENT_NET_POOL", "7")
    for var in ("WARREN_AGENT_MAX_PROCESSES", "WARREN_LOG_FORMAT"):
        # set, then deleted: monkeypatch restores (removes) what `apply` writes into the real
        # environment; a bare delenv of an absent variable records nothing, and the variables
        # leaked into every later test of this worker (agents then logged JSON).
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    applied = config_file.apply(values, keys)
    assert sorted(applied) == ["WARREN_AGENT_MAX_PROCESSES", "WARREN_LOG_FORMAT"]
    settings = AgentSettings()
    assert (settings.net_pool, settings.max_processes, settings.log_format) == (7, 64, "json")


def test_booleans_become_what_the_settings_parse() -> None:
    env: dict[str, str] = {}
    config_file.apply({"dial_data_tls_on_loopback": False}, config_file.agent_keys(), env)
    assert env == {"WARREN_AGENT_DIAL_DATA_TLS_ON_LOOPBACK": "false"}


def test_cp_keys_are_the_settings_names() -> None:
    keys = config_file.cp_keys()
    assert keys["database_url"].env == "WARREN_DATABASE_URL"
    assert keys["jwt_secret"].env == "WARREN_JWT_SECRET"
    assert "e2b_port" not in keys  # a flag of `warren cp`, which sets the variable itself


def test_the_commands_refuse_a_bad_file(tmp_path: Path) -> None:
    """``--config`` and its variable, on both commands, before anything starts."""
    bad = write(tmp_path, "database_urll = 'x'\n")
    for argv, env in (
        (["agent", "--config", str(bad)], {}),
        (["cp"], {"WARREN_CP_CONFIG": str(bad)}),
    ):
        command = [sys.executable, "-m", "warren.cli.main", *argv]
        done = subprocess.run(command, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env},
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode != 0
        assert "unknown key 'database_urll'" in done.stderr, done.stderr


def test_the_cp_reads_its_file_under_its_environment(tmp_path: Path) -> None:
    path = tmp_path / "cp.toml"
    path.write_text("monitor_concurrency = 100\n")  # more than the pool: the CP's settings refuse it

    def cp(**env: str) -> str:
        done = subprocess.run([sys.executable, "-m", "warren.cli.main", "cp", "--config", str(path)],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={"PATH": "/usr/bin:/bin", **env})  # fmt: skip
        assert done.returncode != 0
        return done.stdout + done.stderr

    assert "WARREN_MONITOR_CONCURRENCY must be below" in cp()
    # The environment's value wins: the CP gets past its settings to the missing database URL.
    assert "WARREN_DATABASE_URL is not set" in cp(WARREN_MONITOR_CONCURRENCY="2")
