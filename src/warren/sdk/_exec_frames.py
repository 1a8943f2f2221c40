"""The exec stream's frames as the SDK reads and writes them (docs/api.md): output bytes out of a
``stdout``/``stderr`` frame, stdin into frames the server's message limit takes, a unary
exec's body, and an ``error`` frame into the matching typed error."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from warren.sdk._exceptions import StreamError, WarrenTimeoutError, error_from_response


def frame_bytes(frame: dict[str, Any]) -> bytes:
    """Output bytes of a stdout/stderr frame (text in ``data`` or base64 in ``data_b64``)."""
    if "data_b64" in frame:
        return base64.b64decode(frame["data_b64"])
    return str(frame.get("data", "")).encode()


# Bytes of stdin per exec-stream frame: JSON-escaped (at most 6 bytes a byte) a frame stays
# well under the server's WebSocket message limit (WARREN_WS_MAX_MESSAGE, at least 256 KiB).
STDIN_CHUNK = 32 << 10


def stdin_frames(data: str | bytes) -> Iterator[dict[str, Any]]:
    """``data`` as stdin frames of at most STDIN_CHUNK bytes each."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) <= STDIN_CHUNK:
        yield stdin_frame(data)
        return
    for i in range(0, len(raw), STDIN_CHUNK):
        yield stdin_frame(raw[i : i + STDIN_CHUNK])  # a character cut in two goes as base64


def stdin_frame(data: str | bytes) -> dict[str, Any]:
    if isinstance(data, str):
        return {"type": "stdin", "data": data}
    try:
        return {"type": "stdin", "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"type": "stdin", "data_b64": base64.b64encode(data).decode()}


def decode_exec_response(body: dict[str, Any]) -> tuple[bytes, bytes]:
    out, err = body.get("stdout", ""), body.get("stderr", "")
    if body.get("encoding") == "base64":
        return base64.b64decode(out), base64.b64decode(err)
    return str(out).encode(), str(err).encode()


def raise_frame_error(frame: dict[str, Any]) -> None:
    """An ``error`` frame from the server becomes the matching typed error."""
    status = frame.get("status")
    code = str(frame.get("code") or "stream_error")
    message = str(frame.get("data") or frame.get("message") or "exec stream failed")
    if code == "timeout":
        raise WarrenTimeoutError(message, code=code)
    if isinstance(status, int):
        raise error_from_response(status, json.dumps({"error": {"code": code, "message": message}}).encode())
    raise StreamError(message, code=code)
