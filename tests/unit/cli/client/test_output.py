"""What the CLI shows of text others chose (cli/terminal.py, the client's consoles): a terminal
obeys the control sequences it is sent, so none reaches it, and no Rich markup in such text is
read. The attack, with a sandbox's file names and a CLI listing them:
tests/security/test_attack_session22_cli_escapes.py."""

from __future__ import annotations

import io
import json

import pytest
import typer
from rich.text import Text

from warren.cli.client import output
from warren.cli.terminal import SafeConsole
from warren.sdk import WarrenError

# An OSC 52 clipboard write, a screen clear, a window title, a bell, a line overwritten (CR),
# and an OSC 8 hyperlink as Rich markup.
EVIL = (
    "x\x1b]52;c;cm0gLXJmIH4=\x1b\\y\x1b[2J\x1b]0;pwned\x07\rz\x9b31m[link=https://evil.example]click[/link]"
)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The client's consoles, writing to a buffer as to a colour terminal."""
    buf = io.StringIO()
    for name in ("out", "err"):
        console = SafeConsole(file=buf, force_terminal=True, color_system="truecolor", width=300)
        monkeypatch.setattr(output, name, console)
    return buf


def _obeyed(text: str) -> list[str]:
    """The control sequences in ``text`` a terminal would act on, Rich's own colours aside."""
    found = [seq for seq in ("\x1b]", "\x1b[2J", "\x07", "\r", "\x9b") if seq in text]
    return found + (["OSC 8 link"] if "\x1b]8;" in text else [])


def test_table_cells_are_plain_text_with_controls_written_out(terminal: io.StringIO) -> None:
    t = output.table("PATH", "OWNER")
    t.add_row(EVIL, "nobody")
    output.out.print(t)
    shown = terminal.getvalue()
    assert _obeyed(shown) == [], repr(shown)
    assert "\\x1b]52;c;" in shown and "[link=https://evil.example]" in shown  # shown, not obeyed


def test_messages_keep_their_lines_and_lose_their_controls(terminal: io.StringIO) -> None:
    output.out.print(f"Joined {EVIL} (team-1) as member.\nnext line\tand a tab")
    shown = terminal.getvalue()
    assert _obeyed(shown) == [], repr(shown)
    assert "\nnext line" in shown and "and a tab" in shown  # (Rich writes the tab as spaces)


def test_an_api_error_quoting_a_name_is_one_safe_line(terminal: io.StringIO) -> None:
    with pytest.raises(typer.Exit), output.api_errors():
        raise WarrenError(f"no such file: {EVIL}")
    shown = terminal.getvalue()
    assert _obeyed(shown) == [], repr(shown)
    assert "Error:" in shown and "no such file: x\\x1b]52" in shown


def test_shown_writes_each_control_as_its_code() -> None:
    assert output.shown("a\x1bb\x00c\x7fd\x85e\nf\tg") == "a\\x1bb\\x00c\\x7fd\\x85e\\x0af\\x09g"
    assert output.shown("a\nb\tc\rd", lines=True) == "a\nb\tc\\x0dd"
    assert output.shown("plain ünïcode ✓") == "plain ünïcode ✓"


def test_shown_writes_bidi_controls_as_their_code() -> None:
    # "txt.exe" that reads "exe.txt": a right-to-left override, isolates, a line separator.
    assert output.shown("a\u202eexe.txt\u2066b\u2069\u2028c") == "a\\u202eexe.txt\\u2066b\\u2069\\u2028c"
    assert output.shown("שלום مرحبا") == "שלום مرحبا"  # right-to-left text itself stays


def test_json_output_writes_c1_and_bidi_controls_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    name = "Friendly\u009d52;c;cm0gLXJmIH4=\u009c\u202e\u2029ünï\x1b"
    output.print_json([{"team_name": name}])
    printed = capsys.readouterr().out
    assert json.loads(printed) == [{"team_name": name}]  # the same JSON
    assert "\\u009d52;c;" in printed and "\\u202e\\u2029ünï\\u001b" in printed, printed
    assert not any(0x7F <= ord(c) <= 0x9F or c in "\u202e\u2029" for c in printed), repr(printed)


def test_a_coloured_table_cell_is_shown_and_keeps_its_colour(terminal: io.StringIO) -> None:
    t = output.table("ID", "STATUS")
    t.add_row("sb-1", Text.assemble(("stopped", "red"), f" (lifetime_ended{EVIL})"))
    output.out.print(t)
    shown = terminal.getvalue()
    assert _obeyed(shown) == [], repr(shown)
    assert "\x1b[31mstopped" in shown and "(lifetime_ended" in shown and "x\\x1b]52;c;" in shown


def test_a_lone_surrogate_is_shown_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    name = json.loads('"x\\ud800y"')  # a server's JSON may hold one; no UTF-8 stream writes it
    output.print_json({"name": name})
    printed = capsys.readouterr().out
    assert json.loads(printed) == {"name": name} and "x\\ud800y" in printed
    assert output.shown(name) == "x\\ud800y"
