"""Text for a terminal that the terminal shows and does not obey.

What the CLI shows is often chosen by someone else: a file name or a symlink target by code in
a sandbox, a team's name or an account's email by whoever made it, an error by the server
quoting either. A terminal obeys the control sequences in what it is sent (ESC starts those that
set its title or clipboard, clear it, or make links), so these consoles write every control
character as ``\\xNN`` (:func:`shown`; newlines and tabs of messages stay) and read no Rich
markup unless a call asks for it (then :func:`rich.markup.escape` what it quotes); table cells
are plain text.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["SafeConsole", "SafeTable", "shown"]

# C0 and C1 controls and DEL; messages keep their newlines and tabs, table cells do not.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(m: re.Match[str]) -> str:
    return f"\\x{ord(m[0]):02x}"


def shown(value: object, *, lines: bool = False) -> str:
    """``value`` as text a terminal shows and does not obey: control characters written as
    ``\\xNN`` (with ``lines``, newlines and tabs kept)."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(_escaped, str(value))


class SafeConsole(Console):
    """A console whose text arguments are :func:`shown` (lines kept) and read as plain text
    unless the call passes ``markup=True``."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("markup", False)
        super().print(*(shown(o, lines=True) if isinstance(o, str) else o for o in objects), **kwargs)


class SafeTable(Table):
    """A table whose text cells are plain text, control characters :func:`shown`."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(shown(c)) if isinstance(c, str) else c for c in renderables), **kwargs)
