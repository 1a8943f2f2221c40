"""Jupyter IOPub messages → the NDJSON objects ``e2b-code-interpreter`` parses (one per line):

- ``{"type": "stdout" | "stderr", "text", "timestamp"}`` (timestamp: Unix nanoseconds);
- ``{"type": "result", <format>: ..., "is_main_result", "extra"}``: an ``execute_result`` (the
  cell's value, ``is_main_result: true``) or a ``display_data`` (``display()``, a matplotlib
  figure); formats by MIME type below, any other MIME type under ``extra``;
- ``{"type": "error", "name", "value", "traceback"}`` (the traceback as one string);
- ``{"type": "number_of_executions", "execution_count"}``.

Every value a kernel sends is bounded here (:data:`MAX_TEXT` per stream chunk,
:data:`MAX_VALUE` per result format): a cell printing a gigabyte must not make a line the
client cannot hold.
"""

from __future__ import annotations

import time
from typing import Any

MAX_TEXT = 1 << 20  # one stream message's text
MAX_VALUE = 16 << 20  # one result format's value (a PNG as base64, an HTML table)
MAX_TRACEBACK = 256 << 10
TRUNCATED = "\n[... truncated by the code interpreter]\n"

# MIME type → the SDK's Result field.
FORMATS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}

Event = dict[str, Any]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATED


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(repr(value))


def result(data: dict[str, Any], *, main: bool) -> Event:
    """A ``result`` line from a display bundle (MIME type → value)."""
    out: Event = {"type": "result", "is_main_result": main}
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        if _size(value) > MAX_VALUE:
            extra[mime] = f"[omitted: larger than {MAX_VALUE} bytes]"
            continue
        field = FORMATS.get(mime)
        if field is None:
            extra[mime] = value
        elif field == "json" and not isinstance(value, dict):
            out[field] = {"value": value}  # the SDK types it as an object
        else:
            out[field] = value
    if extra:
        out["extra"] = extra
    return out


def error(name: str, value: str, traceback: list[str] | str) -> Event:
    text = traceback if isinstance(traceback, str) else "\n".join(traceback)
    return {
        "type": "error",
        "name": _cut(name, 1024),
        "value": _cut(value, MAX_TEXT),
        "traceback": _cut(text, MAX_TRACEBACK),
    }


def stream(name: str, text: str) -> Event:
    kind = "stderr" if name == "stderr" else "stdout"
    return {"type": kind, "text": _cut(text, MAX_TEXT), "timestamp": time.time_ns()}


def from_iopub(msg: dict[str, Any]) -> Event | None:
    """The line for one IOPub message of an execution, or None (status, input echo, ...)."""
    kind = msg.get("header", {}).get("msg_type")
    content: dict[str, Any] = msg.get("content") or {}
    if kind == "stream":
        return stream(str(content.get("name", "stdout")), str(content.get("text", "")))
    if kind == "execute_result":
        return result(content.get("data") or {}, main=True)
    if kind == "display_data":
        return result(content.get("data") or {}, main=False)
    if kind == "error":
        return error(
            str(content.get("ename", "")), str(content.get("evalue", "")), content.get("traceback") or []
        )
    if kind == "execute_input":
        count = content.get("execution_count")
        if isinstance(count, int):
            return {"type": "number_of_executions", "execution_count": count}
    return None


END = {"type": "end_of_execution"}
