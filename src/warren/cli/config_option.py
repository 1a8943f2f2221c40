"""``--config PATH`` of ``warren agent`` and ``warren cp``: a TOML file of their settings
(``warren.config_file``), attached by ``cli/main.py`` when it loads either command.

The option is eager, so click reads the file before it resolves any other option: the file's
values land in the environment first, and every option that has an ``envvar`` takes them from
there unless its flag was given. Without ``--config`` (or its variable) the default file is read
when it exists.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click as click
from typer._click.globals import get_current_context

from warren import config_file


@dataclass(frozen=True)
class Spec:
    default: Path
    env: str
    keys: Callable[[], dict[str, config_file.Key]]
    # Flags that read a variable of the file's keys (only the agent has ones without an envvar).
    envvars: dict[str, str]


SPECS = {
    "agent": Spec(
        config_file.AGENT_CONFIG,
        "WARREN_AGENT_CONFIG",
        config_file.agent_keys,
        {
            "listen": "WARREN_AGENT_LISTEN",
            "data_dir": "WARREN_AGENT_DATA_DIR",
            "runtime": "WARREN_AGENT_RUNTIME",
            "address": "WARREN_AGENT_ADDRESS",
        },
    ),
    "cp": Spec(config_file.CP_CONFIG, "WARREN_CP_CONFIG", config_file.cp_keys, {}),
}
# `warren doctor` checks what the agent's file says (its options read the same variables).
SPECS["doctor"] = SPECS["agent"]

_META_KEY = "warren.config_file.registration"


def _load(spec: Spec, ctx: click.Context, value: Path | None) -> None:
    path = value or spec.default
    if not value and not path.exists():
        return  # no file: the environment and the flags alone
    keys = spec.keys()
    values = config_file.read(path, keys)
    token = values.pop("registration_token", None)
    if token is not None:
        ctx.meta[_META_KEY] = token
    config_file.apply(values, keys)


def _file_token_when_unregistered(callback: Callable[..., Any]) -> Callable[..., Any]:
    """The file's ``registration_token`` is for the first start only: a token given by flag or
    environment always (re-)registers, the file's only while the data dir holds no credentials."""

    @functools.wraps(callback)
    def run(**kwargs: Any) -> Any:
        token = get_current_context().meta.get(_META_KEY)
        if token and not kwargs.get("register"):
            from warren.agent.control_plane import load_credentials

            if load_credentials(Path(kwargs["data_dir"])) is None:
                kwargs["register"] = token
        return callback(**kwargs)

    return run


def _option(spec: Spec) -> click.Parameter:
    """A typer-made ``--config`` option (typer's click needs typer's own parameter classes)."""

    def load(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        _load(spec, ctx, value)

    option = typer.Option(
        "--config",
        envvar=spec.env,
        is_eager=True,
        expose_value=False,
        callback=load,
        help="TOML file of settings (keys: the variables' names without the WARREN_ prefix, "
        f"lower-case); the environment and flags override it. Default: {spec.default} when it "
        "exists.",
    )

    def proto(config: Path | None = None) -> None:
        pass

    # Set here, not in the signature: annotations are strings under __future__, and this one
    # names a local.
    proto.__annotations__ = {"config": Annotated[Path | None, option], "return": None}
    return _first_param(proto)


def _first_param(fn: Callable[..., None]) -> click.Parameter:
    single = typer.Typer(add_completion=False)
    single.command()(fn)
    return typer.main.get_command(single).params[0]


def attach(name: str, command: click.Command) -> None:
    """Give ``command`` its ``--config`` option (a no-op for commands without a config file)."""
    spec = SPECS.get(name)
    if spec is None:
        return
    for param in command.params:
        if param.name in spec.envvars and not param.envvar:
            param.envvar = spec.envvars[param.name]
    command.params.insert(0, _option(spec))
    if name == "agent" and command.callback is not None:
        command.callback = _file_token_when_unregistered(command.callback)
