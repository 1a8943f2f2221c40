"""Every console of the CLI is the escaping one (cli/terminal.py; what it does with hostile text:
tests/unit/cli/client/test_output.py), and markup is read only where a call asks for it."""

from __future__ import annotations

import io

import pytest

from warren.cli import admin
from warren.cli.client import output
from warren.cli.terminal import SafeConsole


def _printed(text: str, **kwargs: bool) -> str:
    buf = io.StringIO()
    SafeConsole(file=buf, width=200, color_system=None).print(text, **kwargs)
    return buf.getvalue().strip()


def test_markup_is_read_only_when_asked() -> None:
    assert _printed("[red]x\x1b[2J[/red]") == "[red]x\\x1b[2J[/red]"
    assert _printed("[red]x[/red]", markup=True) == "x"


CONSOLES = ["admin.out", "admin.err", "admin._out", "admin._err", "output.out", "output.err"]


@pytest.mark.parametrize("name", CONSOLES)
def test_every_cli_console_escapes(name: str) -> None:
    # `warren admin list` prints accounts' emails from the database; the client prints what
    # sandboxes and teammates named.
    module, attr = name.split(".")
    assert isinstance(getattr({"admin": admin, "output": output}[module], attr), SafeConsole)
