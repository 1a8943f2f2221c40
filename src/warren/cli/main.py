"""The ``warren`` command: one entry point for running Warren and for using it.

Every sub-command lives in its own module and is registered from the ``COMMANDS`` table below.
To plug in a new one, add ONE line to that table: ``(name, "module:attribute", panel)``. A
``typer.Typer`` attribute becomes a command group (``warren NAME SUB ...``); a function becomes a
single command whose ``--help`` text is its docstring.

Modules are imported only when their command runs (or for ``warren --help``): ``warren up``
does not pay for the client's imports, and a broken module breaks only its own command.
"""

from __future__ import annotations

import functools
import importlib

import typer

# Typer vendors its own copy of click; commands and contexts are of those types.
from typer import _click as click
from typer.core import TyperGroup

RUN = "Run Warren"
USE = "Use Warren (talks to a control plane over its REST API)"

# (name, "module:attribute", help panel). The one place sub-commands are wired in.
COMMANDS: list[tuple[str, str, str]] = [
    ("up", "warren.cli.up:up_command", RUN),
    ("cp", "warren.cli.up:cp_command", RUN),
    ("agent", "warren.cli.agent:agent_command", RUN),
    # Two words: `warren agent install …` (LazyGroup.resolve_command); `warren agent …` runs it.
    ("agent install", "warren.cli.agent_install:install_command", RUN),
    ("doctor", "warren.cli.doctor:doctor_command", RUN),
    ("proxy", "warren.cli.proxy:proxy_command", RUN),
    ("migrate", "warren.cli.migrate:app", RUN),
    ("admin", "warren.cli.admin:app", RUN),
    ("login", "warren.cli.client.login:login", USE),
    ("sandbox", "warren.cli.client.sandbox:app", USE),
    ("files", "warren.cli.client.files:app", USE),
    ("snapshot", "warren.cli.client.snapshot:app", USE),
    ("host", "warren.cli.client.host:app", USE),
    ("key", "warren.cli.client.key:app", USE),
    ("team", "warren.cli.client.team:app", USE),
    ("invitations", "warren.cli.client.invitations:app", USE),
    ("template", "warren.cli.client.template:app", USE),
]


@functools.cache
def load_command(name: str) -> click.Command | None:
    """The click command registered as ``name`` in ``COMMANDS``, imported on first use."""
    for cmd_name, target, panel in COMMANDS:
        if cmd_name != name:
            continue
        module_name, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
        if isinstance(obj, typer.Typer):
            command = typer.main.get_command(obj)
        else:
            single = typer.Typer(add_completion=False)
            single.command(name)(obj)
            command = typer.main.get_command(single)
        # Shell completion is a property of the whole `warren` program, not of each sub-command.
        command.params = [
            p for p in command.params if p.name not in ("install_completion", "show_completion")
        ]
        command.name = name
        from warren.cli import config_option  # `--config FILE` of `warren agent` and `warren cp`

        config_option.attach(name, command)
        command.rich_help_panel = panel  # type: ignore[attr-defined]  # read by typer's help
        return command
    return None


class LazyGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # A two-word name (`agent install`) before the one-word command it starts with.
        if len(args) >= 2 and (command := load_command(f"{args[0]} {args[1]}")) is not None:
            return command.name, command, args[2:]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="warren",
    cls=LazyGroup,
    help=(
        "Warren: a self-hosted sandbox platform for untrusted code.\n\n"
        "Start everything on this machine with [bold]warren up[/bold], then sign up at the printed "
        "URL. Production runs [bold]warren cp[/bold] (N replicas, one PostgreSQL) and "
        "[bold]warren agent[/bold] on every sandbox host."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    # A callback makes `app` a command group even though its commands come from LazyGroup.
    pass


if __name__ == "__main__":  # `python -m warren.cli.main ...`: how `warren up` starts its children
    app()
