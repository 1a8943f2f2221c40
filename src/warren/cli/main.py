"""The ``warren`` command: one entry point for running Warren and for using it.

Every sub-command lives in its own module and is registered from the ``COMMANDS`` table below.
To plug in a new one, add ONE line to that table: ``(name, "module:attribute", panel)``. A
``typer.Typer`` attribute becomes a command group (``warren NAME SUB ...``); a function becomes a
single command whose ``--help`` text is its docstring.
"""

from __future__ import annotations

import importlib

import typer

RUN = "Run Warren"
USE = "Use Warren (talks to a control plane over its REST API)"

# (name, "module:attribute", help panel). The one place sub-commands are wired in.
COMMANDS: list[tuple[str, str, str]] = [
    ("up", "warren.cli.up:up_command", RUN),
    ("cp", "warren.cli.up:cp_command", RUN),
    ("migrate", "warren.cli.migrate:app", RUN),
    ("admin", "warren.cli.admin:app", RUN),
    ("login", "warren.cli.client:login", USE),
    ("sandbox", "warren.cli.client:sandbox_app", USE),
    ("file", "warren.cli.client:file_app", USE),
    ("snapshot", "warren.cli.client:snapshot_app", USE),
    ("host", "warren.cli.client:host_app", USE),
    ("key", "warren.cli.client:key_app", USE),
    ("agent", "warren.cli.agent:agent_command", RUN),
]

app = typer.Typer(
    name="warren",
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


def _register(target_app: typer.Typer, name: str, target: str, panel: str) -> None:
    module_name, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    if isinstance(obj, typer.Typer):
        target_app.add_typer(obj, name=name, rich_help_panel=panel)
    else:
        target_app.command(name, rich_help_panel=panel)(obj)


for _name, _target, _panel in COMMANDS:
    _register(app, _name, _target, _panel)


if __name__ == "__main__":  # `python -m warren.cli.main ...`: how `warren up` starts its children
    app()
