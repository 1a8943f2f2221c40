"""cli/config_option.py: the file's registration token is for the first start only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer import _click as click

from warren.agent.control_plane import HostCredentials, save_credentials
from warren.cli import config_option
from warren.cli.main import load_command


def run_with_file_token(data_dir: Path, register: str | None) -> str | None:
    """What ``warren agent`` gets as ``register`` when its config file holds ``file-token``."""
    seen: dict[str, Any] = {}
    wrapped = config_option._file_token_when_unregistered(lambda **kw: seen.update(kw))
    command = load_command("agent")
    assert command is not None
    with click.Context(command) as ctx:
        ctx.meta[config_option._META_KEY] = "file-token"
        wrapped(register=register, data_dir=data_dir)
    return seen["register"]


def test_used_while_unregistered(tmp_path: Path) -> None:
    assert run_with_file_token(tmp_path, None) == "file-token"


def test_not_spent_again_once_registered(tmp_path: Path) -> None:
    save_credentials(tmp_path, HostCredentials(host_id="host-x", jwt="a.b.c"))
    assert run_with_file_token(tmp_path, None) is None


def test_a_flag_or_environment_token_wins(tmp_path: Path) -> None:
    assert run_with_file_token(tmp_path, "flag-token") == "flag-token"


def test_agent_and_cp_have_config_and_the_agent_flags_variables() -> None:
    agent, cp = load_command("agent"), load_command("cp")
    assert agent is not None and cp is not None
    envvars = {p.name: p.envvar for p in agent.params}
    assert envvars["listen"] == "WARREN_AGENT_LISTEN" and envvars["data_dir"] == "WARREN_AGENT_DATA_DIR"
    assert "--config" in {o for p in cp.params for o in getattr(p, "opts", [])}
