"""How the client commands show results and errors.

Tables for people, ``--json`` for scripts, and every API error as one line on stderr with exit
code 1 (``api_errors``) instead of a traceback.

What the CLI shows is often chosen by someone else, so the client's consoles and tables are
the ones of ``warren.cli.terminal``: control characters written as ``\\xNN``, no Rich markup read
unless a call asks for it. A command's own output (``sandbox exec``, a
build's log, a shell) is the command's, written as it comes, as ``ssh`` or ``docker`` do.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from warren.cli.terminal import SafeConsole, SafeTable, shown
from warren.sdk import WarrenError

__all__ = [
    "JsonOpt", "api_errors", "err", "fail", "human_size", "out", "print_json", "print_rows", "shown",
    "table", "timestamp",
]  # fmt: skip

out = SafeConsole()
err = SafeConsole(stderr=True)

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


def table(*columns: str) -> SafeTable:
    """A borderless table whose ID / NAME columns are never cut, however narrow the terminal:
    people copy them into the next command."""
    t = SafeTable(box=None, header_style="bold")
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
