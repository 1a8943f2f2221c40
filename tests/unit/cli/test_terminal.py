"""The CLI's consoles show what others chose (file names, emails, team names) as text: control
characters written as ``\\xNN``, Rich markup read only where a call asks for it."""

from __future__ import annotations

import io

import pytest

from warren.cli import admin
from warren.cli.client import output
from warren.cli.terminal import SafeConsole, SafeTable, shown

# An OSC 52 clipboard write, a title with its BEL, a CR over the line, and markup for a link.
HOSTILE = "a\x1b]52;c;cm0gLXJmIH4=\x1b\\b\x1b]0;pwned\x07\rX[link=https://evil.example]c[/link]"


def _printed(*objects: object, **kwargs: object) -> str:
    buf = io.StringIO()
    SafeConsole(file=buf, width=400, color_system=None).print(*objects, **kwargs)  # type: ignore[arg-type]
    return buf.getvalue()


def test_shown_writes_controls_as_text() -> None:
    assert shown("a\x1b[2Jb\x9bc\x7f") == "a\\x1b[2Jb\\x9bc\\x7f"
    assert shown("one\ntwo\tx", lines=True) == "one\ntwo\tx"
    assert shown("one\ntwo") == "one\\x0atwo"


def test_a_console_shows_hostile_text_and_reads_no_markup() -> None:
    text = _printed(HOSTILE)
    assert not any(c in text for c in "\x1b\x07\r"), repr(text)
    assert "[link=https://evil.example]c[/link]" in text


def test_markup_is_read_only_when_asked() -> None:
    assert _printed("[red]x[/red]").strip() == "[red]x[/red]"
    assert _printed("[red]x[/red]", markup=True).strip() == "x"


def test_a_table_cell_is_text() -> None:
    t = SafeTable("NAME")
    t.add_row(HOSTILE)
    buf = io.StringIO()
    SafeConsole(file=buf, width=400, color_system=None).print(t)
    assert "\x1b" not in buf.getvalue() and "[link=" in buf.getvalue()


@pytest.mark.parametrize(
    "console", [admin.out, admin.err, admin._out, admin._err, output.out, output.err], ids=repr
)
def test_every_cli_console_escapes(console: object) -> None:
    # `warren admin list` prints accounts' emails from the database; the client prints what
    # sandboxes and teammates named.
    assert isinstance(console, SafeConsole)
