"""Text for a terminal that the terminal shows and does not obey.

What the CLI shows is often chosen by someone else: a file name or a symlink target by code in
a sandbox, a team's name or an account's email by whoever made it, an error by the server
quoting either. A terminal obeys the control sequences in what it is sent (ESC starts those that
set its title or clipboard, clear it, or make links), so these consoles write every control
character as ``\\xNN`` (:func:`shown`; newlines and tabs of messages stay) and read no Rich
markup unless a call asks for it (then :func:`rich.markup.escape` what it quotes); table cells
are plain text. The Unicode bidirectional controls and line separators, which make a terminal
show text in another order than it is (a name that reads as another), are written ``\\uNNNN``.
The same characters go into ``--json`` output as JSON escapes (:func:`json_shown`) and into a
build's log as ``\\xNN`` (:func:`log_shown`, which keeps the log's colours).
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Span, Text

__all__ = ["SafeConsole", "SafeTable", "json_shown", "log_shown", "shown"]

# DEL and the C1 controls (U+009B is CSI, U+009D OSC to a terminal that reads them in UTF-8),
# the bidirectional embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069) and
# the line and paragraph separators: what JSON leaves as it is and a terminal may act on. And
# lone surrogates (a server's JSON may hold "\ud800"), which no UTF-8 stream can write.
_BEYOND_C0 = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
# ... and the C0 controls; messages keep their newlines and tabs, table cells do not.
_CONTROLS = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
_CONTROLS_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")
# A log's colours (SGR: ESC [ digits and semicolons m) stay; any other control is shown.
_LOG_CONTROLS = re.compile(f"(\x1b\\[[0-9;]*m)|[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")
_JSON_CONTROLS = re.compile(f"[{_BEYOND_C0}]")


def _escaped(m: re.Match[str]) -> str:
    code = ord(m[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object, *, lines: bool = False) -> str:
    """``value`` as text a terminal shows and does not obey: control characters written as
    ``\\xNN``, bidirectional controls as ``\\uNNNN`` (with ``lines``, newlines and tabs kept)."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(_escaped, str(value))


def log_shown(text: str) -> str:
    """A build's log as :func:`shown` with ``lines``, its SGR colour sequences kept."""
    return _LOG_CONTROLS.sub(lambda m: m[1] or _escaped(m), text)


def json_shown(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the characters :func:`shown`
    escapes beyond C0 (JSON escapes those) as ``\\uNNNN``: the same JSON when parsed. They occur
    only inside its strings."""
    return _JSON_CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _shown_text(text: Text, *, lines: bool) -> Text:
    """A rich ``Text`` :func:`shown`, its styles kept on the characters they were on."""
    pattern = _CONTROLS_BUT_LINES if lines else _CONTROLS
    if not pattern.search(text.plain):
        return text
    parts: list[str] = []
    at = [0]  # where each character of the old text starts in the new one, and its end
    for c in text.plain:
        parts.append(pattern.sub(_escaped, c))
        at.append(at[-1] + len(parts[-1]))
    new = text.copy()
    new.plain = "".join(parts)
    end = len(text.plain)
    new.spans = [Span(at[min(s.start, end)], at[min(s.end, end)], s.style) for s in text.spans]
    return new


class SafeConsole(Console):
    """A console whose text arguments are :func:`shown` (lines kept) and read as plain text
    unless the call passes ``markup=True``."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("markup", False)
        super().print(*(_safe(o, lines=True) for o in objects), **kwargs)


class SafeTable(Table):
    """A table whose text cells are plain text, control characters :func:`shown` (a ``Text``
    cell's too: its colours stay)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(shown(c)) if isinstance(c, str) else _safe(c) for c in renderables), **kwargs)


def _safe(obj: Any, *, lines: bool = False) -> Any:
    if isinstance(obj, str):
        return shown(obj, lines=lines)
    if isinstance(obj, Text):
        return _shown_text(obj, lines=lines)
    return obj
