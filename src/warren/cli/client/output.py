"""How the client commands show results and errors.

Tables for people, ``--json`` for scripts, and every API error as one line on stderr with exit
code 1 (``api_errors``) instead of a traceback.

What the CLI shows is often chosen by someone else, so the client's consoles and tables are
the ones of ``warren.cli.terminal``: control characters written as ``\\xNN``, no Rich markup read
unless a call asks for it; ``--json`` writes the ones JSON leaves raw (C1, bidirectional
controls) as ``\\uNNNN``, the same JSON. The user's own command's output (``sandbox exec``, a
shell) is written as it comes, as ``ssh`` does. A build's log is not: a teammate's or a template
author's RUN steps wrote it and another member reads it, replayed or followed live, so
``write_log`` keeps its newlines, tabs and colours and shows every other control (an OSC 52
would write the reader's clipboard).
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

from warren.cli.terminal import SafeConsole, SafeTable, json_shown, log_shown, shown
from warren.sdk import WarrenError
from warren.url_path import PathSegmentError

__all__ = [
    "JsonOpt", "api_errors", "err", "fail", "human_size", "out", "print_json", "print_rows", "shown",
    "table", "timestamp", "write_log",
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
    except (WarrenError, PathSegmentError) as e:
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
    # Names stay readable (no \uNNNN for every accent); what a terminal may obey does not.
    sys.stdout.write(json_shown(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False)) + "\n")


def write_log(text: str) -> None:
    """A build's log text as it comes: its colours and lines kept, any other control shown."""
    sys.stdout.write(log_shown(text))
    sys.stdout.flush()


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
