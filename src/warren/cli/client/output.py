"""How the client commands show results and errors.

Tables for people, ``--json`` for scripts, and every API error as one line on stderr with exit
code 1 (``api_errors``) instead of a traceback.

What the CLI shows is often chosen by someone else: a file name or a symlink target by code in
a sandbox, a team's name by whoever made it, an error by the server quoting either. A terminal
obeys the control sequences in what it is sent (ESC starts those that set its title or
clipboard, clear it, or make links), so the client's consoles write every control character as
``\\xNN`` (:func:`shown`; newlines and tabs of messages stay) and read no Rich markup unless a
call asks for it; table cells are plain text. A command's own output (``sandbox exec``, a
build's log, a shell) is the command's, written as it comes, as ``ssh`` or ``docker`` do.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from warren.sdk import WarrenError

__all__ = [
    "JsonOpt", "api_errors", "err", "fail", "human_size", "out", "print_json", "print_rows", "shown",
    "table", "timestamp",
]  # fmt: skip

# C0 and C1 controls and DEL; messages keep their newlines and tabs, table cells do not.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(m: re.Match[str]) -> str:
    return f"\\x{ord(m[0]):02x}"


def shown(value: object, *, lines: bool = False) -> str:
    """``value`` as text a terminal shows and does not obey: control characters written as
    ``\\xNN`` (with ``lines``, newlines and tabs kept)."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(_escaped, str(value))


class _Console(Console):
    """A console whose text arguments are :func:`shown` (lines kept) and read as plain text
    unless the call passes ``markup=True``."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("markup", False)
        super().print(*(shown(o, lines=True) if isinstance(o, str) else o for o in objects), **kwargs)


class _Table(Table):
    """A table whose text cells are plain text, control characters :func:`shown`."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(shown(c)) if isinstance(c, str) else c for c in renderables), **kwargs)


out = _Console()
err = _Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(Text.assemble(("Error:", "red"), " ", shown(message, lines=True)), highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """One readable line for every API error instead of a traceback."""
    try:
        yield
    except WarrenError as e:
        fail(str(e))


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        raw = getattr(obj, "raw", None)
        if isinstance(raw, dict) and raw:
            return raw
        return {k: _jsonable(v) for k, v in asdict(obj).items() if k != "raw"}
    if isinstance(obj, list):
        return [_jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return obj.strftime("%Y-%m-%dT%H:%M:%SZ")
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def timestamp(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("T", " ").rstrip("Z")
    return value.strftime("%Y-%m-%d %H:%M:%S")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(*columns: str) -> Table:
    """A borderless table whose ID / NAME columns are never cut, however narrow the terminal:
    people copy them into the next command."""
    t = _Table(box=None, header_style="bold")
    for col in columns:
        if col in ("ID", "NAME", "PATH", "STATUS"):
            t.add_column(col, no_wrap=True, min_width=28 if col == "ID" else None)
        else:
            t.add_column(col, justify="right" if col == "SIZE" else "left")
    return t


Row = dict[str, Any]


def print_rows(
    rows: list[Row], json_out: bool, columns: Sequence[str], cells: Callable[[Row], Sequence[str]]
) -> None:
    """A listing: with ``--json`` the rows as the API sent them, else a table of ``cells(row)``."""
    if json_out:
        print_json(rows)
        return
    t = table(*columns)
    for r in rows:
        t.add_row(*cells(r))
    out.print(t)
