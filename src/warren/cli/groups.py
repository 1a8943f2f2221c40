"""What every ``warren <group>`` command group shares: its help, with an example, and that run
bare it shows that help instead of doing nothing."""

from __future__ import annotations

import typer

__all__ = ["command_group"]


def command_group(name: str, summary: str, example: str | None = None) -> typer.Typer:
    return typer.Typer(
        name=name, help=f"{summary}\n\nExample: {example}" if example else summary, no_args_is_help=True
    )
