"""Log lines a tenant's text cannot forge or swell (docs/security.md §33).

Warren's lines are ``key=value`` pairs (``event=sandbox_destroyed sandbox_id=…``) that operators
grep and tools parse, and many of their values are a tenant's text: a path, a request's path, an
error a guest, a sandbox's server or a BYOC agent worded. :func:`safe_message` is every line's
message, as ``record.getMessage()`` would make it, except that each argument written with
``%s``, ``%r`` or ``%a``:

- is cut at :data:`MAX_ARG_CHARS` (``...(+N chars)``), and the whole message at
  :data:`MAX_MESSAGE_CHARS`: no request makes one line huge;
- has its control characters (C0, DEL, C1) and Unicode line and paragraph separators written as
  ``\\xNN`` / ``\\uNNNN``: nothing a tenant sends starts a line of its own, in a file, a
  terminal (no escape sequences) or ``str.splitlines``;
- when it is a value (right after ``=``) holding a space, ``"``, ``=`` or any of those
  characters, is written as a JSON string with ``=`` as ``\\u003d`` (``path="a b"``): it stays
  one value for a ``key=value`` parser and holds no ``key=`` a grep could take for the line's.
  Free text (an error's words) is quoted so only when it holds an ``=`` and one of the others.

An exception's own words (its message and notes, of each exception of the chain) are free text
in a traceback (:func:`safe_traceback`), made safe the same way. Standard library only.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable
from typing import Any

MAX_ARG_CHARS = 1024
MAX_MESSAGE_CHARS = 8192
# C0 controls, DEL, C1 controls, and the separators str.splitlines() and editors break lines at.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What a value may not hold unquoted: whitespace, a quote, an equals sign, any unsafe character.
_NEEDS_QUOTE = re.compile('[\\s"=\x00-\x1f\x7f-\x9f\u2028\u2029]')
# printf-style conversion specifiers, as ``msg % args`` reads them.
_SPEC = re.compile(r"%(\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")
_TEXT_OF: dict[str, Callable[[object], str]] = {"s": str, "r": repr, "a": ascii}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def _code(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str, limit: int = MAX_ARG_CHARS) -> str:
    """``text`` cut at ``limit`` characters, its unsafe characters written as escapes."""
    return _UNSAFE.sub(_code, _cut(text, limit))


def value(text: str) -> str:
    """``text`` as one ``key=value`` value: as it is when it holds nothing a parser or a grep
    would split at, else a JSON string (``=`` as ``\\u003d``, unsafe characters escaped)."""
    text = _cut(text, MAX_ARG_CHARS)
    if not _NEEDS_QUOTE.search(text):
        return text
    quoted = json.dumps(text, ensure_ascii=False).replace("=", "\\u003d")
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def _could_pair(text: str) -> bool:
    """Whether free text (an argument not right after ``=``) could add a ``key=value`` pair of
    its own to the line: an ``=`` after a space, a quote or an unsafe character."""
    return "=" in text and _NEEDS_QUOTE.search(text.replace("=", "")) is not None


def words_of(text: str) -> str:
    """Free text (an error's words): escaped and cut, quoted as a value if it could pair."""
    return value(text) if _could_pair(text) else escape(text)


class _Shown(str):
    """An argument's safe text, shown as it is by ``%s``, ``%r`` and ``%a`` alike."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


def _safe_args(msg: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``args`` with each text argument made safe; None when ``msg`` is not plainly positional
    (``*`` widths, named fields, a count that does not match: ``getMessage`` says what is wrong)."""
    specs = [m for m in _SPEC.finditer(msg) if m.group(4) != "%"]
    if len(specs) != len(args) or any(m.group(1) or "*" in (m.group(2), m.group(3)) for m in specs):
        return None
    out: list[Any] = []
    for m, arg in zip(specs, args, strict=True):
        conv = _TEXT_OF.get(m.group(4))
        if conv is None or isinstance(arg, int | float):
            out.append(arg)  # numbers (and %d, %x, %f … conversions) cannot carry text
            continue
        text = conv(arg)
        out.append(_Shown(value(text) if msg[: m.start()].endswith("=") else words_of(text)))
    return tuple(out)


def safe_message(record: logging.LogRecord) -> str:
    """``record``'s message with its arguments made safe (see the module docstring)."""
    msg = str(record.msg)
    args = record.args
    safe = _safe_args(msg, args) if isinstance(args, tuple) and args else None
    text = msg % safe if safe is not None else record.getMessage()
    return escape(text, MAX_MESSAGE_CHARS)


def _tame(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    words = getattr(te, "_str", None)
    if isinstance(words, str):
        te._str = words_of(words)  # type: ignore[attr-defined]  # what format_exception_only prints
    notes = getattr(te, "__notes__", None)
    if isinstance(notes, list):
        te.__notes__ = [words_of(str(n)) for n in notes]  # type: ignore[attr-defined]
    for nested in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if isinstance(nested, traceback.TracebackException):
            _tame(nested, seen)


def safe_traceback(exc_info: Any) -> str:
    """The traceback ``logging.Formatter.formatException`` writes, with each exception's own
    words escaped and cut; the plain one if the exception cannot be read this way."""
    try:
        te = traceback.TracebackException(exc_info[0], exc_info[1], exc_info[2], compact=True)
        _tame(te, set())
        return "".join(te.format()).rstrip("\n")
    except Exception:
        return logging.Formatter().formatException(exc_info)


__all__ = ["MAX_ARG_CHARS", "MAX_MESSAGE_CHARS", "escape", "safe_message", "safe_traceback", "value"]
