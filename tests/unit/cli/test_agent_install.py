"""The shipped systemd units (deploy/systemd/) and the one `warren agent install` writes."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warren.cli import agent_install
from warren.cli.main import load_command

REPO = Path(__file__).resolve().parents[3]
UNITS = REPO / "deploy" / "systemd"
VENV_WARREN = Path(sys.executable).parent / "warren"


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_install_writes_the_shipped_unit() -> None:
    shipped = (UNITS / "warren-agent.service").read_text()
    assert agent_install.render_unit(agent_install.SHIPPED_EXECUTABLE) == shipped


@pytest.mark.parametrize("unit", ["warren-agent.service", "warren-cp.service"])
def test_exec_start_names_a_command_and_its_flags(unit: str) -> None:
    service = parse((UNITS / unit).read_text())["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == agent_install.SHIPPED_EXECUTABLE
    command = load_command(argv[1])
    assert command is not None, argv[1]
    flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
    for word in argv[2:]:
        if word.startswith("--"):
            assert word in flags, f"{unit}: {word} is not a flag of warren {argv[1]}"
    assert service["Type"] == "exec" and service["Restart"] == "on-failure"
    assert parse((UNITS / unit).read_text())["Install"]["WantedBy"] == "multi-user.target"


def test_the_agent_unit_keeps_sandboxes_and_stays_in_the_host_namespaces() -> None:
    service = parse((UNITS / "warren-agent.service").read_text())["Service"]
    assert service["KillMode"] == "process"
    # Any of these would give the agent a private mount namespace (or strip what runc needs).
    absent = (
        "ProtectSystem",
        "PrivateTmp",
        "PrivateMounts",
        "PrivateDevices",
        "ProtectHome",
        "NoNewPrivileges",
        "PrivateNetwork",
        "CapabilityBoundingSet",
        "User",
        "DynamicUser",
    )
    for option in absent:
        assert option not in service, option


def test_the_cp_unit_is_hardened() -> None:
    service = parse((UNITS / "warren-cp.service").read_text())["Service"]
    assert service["DynamicUser"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert service["EnvironmentFile"] == "/etc/warren/cp.env"


def test_the_config_it_writes_is_a_config_the_agent_reads(tmp_path: Path) -> None:
    from warren import config_file

    path = tmp_path / "agent.toml"
    path.write_text(agent_install.render_config(
        cp_url="https://cp.example.com", token='tok"en\\', listen="0.0.0.0:50051",
        address="10.0.0.11:50051", data_dir=Path("/var/lib/warren/agent"), runtime="crun",
    ))  # fmt: skip
    assert config_file.read(path, config_file.agent_keys()) == {
        "cp_url": "https://cp.example.com", "listen": "0.0.0.0:50051", "address": "10.0.0.11:50051",
        "data_dir": "/var/lib/warren/agent", "runtime": "crun", "registration_token": 'tok"en\\',
    }  # fmt: skip


def test_default_address_is_the_route_towards_the_cp() -> None:
    assert agent_install.default_address("http://127.0.0.1:8000", "0.0.0.0:50051") == "127.0.0.1:50051"
    assert agent_install.default_address("http://127.0.0.1:8000", "10.1.2.3:5") == "10.1.2.3:5"


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` (no systemd needs to run): every key known, every value parsed.
    ExecStart must exist, so it names this checkout's warren."""
    assert shutil.which("systemd-analyze"), "the systemd package (systemd-analyze) is not installed"
    for unit in ("warren-agent.service", "warren-cp.service"):
        text = (UNITS / unit).read_text().replace(agent_install.SHIPPED_EXECUTABLE, str(VENV_WARREN))
        (tmp_path / unit).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stdout + done.stderr
