"""The Connect protocol, JSON codec, over HTTP/1.1 (docs/e2b.md §3): what E2B's SDK speaks to
envd. Unary calls are one JSON body each way; streams are 5-byte envelopes (a flag byte and a
big-endian length) carrying JSON, the last one an end-of-stream envelope (flag 0x02) with
``{}`` or ``{"error": {"code", "message"}}``.

Handlers are plain coroutines over dicts (proto3 JSON: lowerCamelCase names, int64 as strings,
bytes as base64, enums by name); this module frames them and turns errors into Connect's
shapes. Every byte a client sends is bounded, and so is its time: a stream's request messages
are paced as uploads are (``cp/body_cap.Pace``; until session 12 a client trickling a byte a
minute held a stream slot for ever).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warren import errors
from warren.cp.body_cap import Pace
from warren.cp.e2b.errors import connect_code
from warren.cp.http_errors import status_and_code
from warren.cp.state import state_of

MAX_MESSAGE = 4 << 20  # one request message (a file is sent through /files, not RPC)
# A client stream's messages may be this many body deadlines (WARREN_BODY_READ_TIMEOUT_S, 30 s:
# 120 s) apart: E2B's SDK sends a StreamInput keepalive every 50 s when it has no input.
IDLE_DEADLINES = 4
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02

Message = dict[str, Any]

# Connect's HTTP status for each code (the Connect protocol specification).
_STATUS_BY_CODE = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class ConnectError(Exception):
    """An RPC error with its Connect code (``not_found``, ``invalid_argument``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in _STATUS_BY_CODE else "unknown"
        self.message = message

    def body(self) -> Message:
        return {"code": self.code, "message": self.message}


def as_connect_error(exc: BaseException) -> ConnectError:
    """The Connect error for what a handler raised: its own, a domain error by the one status
    map, an agent error by its gRPC code; anything else is ``internal`` (and logged by the
    caller)."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, errors.AgentError) and exc.rpc_code:
        return ConnectError(exc.rpc_code.lower(), exc.message)
    if isinstance(exc, errors.WarrenError):
        status, _ = status_and_code(exc)
        return ConnectError(connect_code(status), exc.message)
    return ConnectError("internal", "internal error")


def error_response(err: ConnectError) -> Response:
    """A unary call's error answer."""
    return JSONResponse(err.body(), status_code=_STATUS_BY_CODE[err.code])


# A lone surrogate can only arrive as a \uD800-\uDFFF escape (raw UTF-8 cannot carry one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def decode_message(raw: bytes) -> Message:
    """One JSON message: an object, nested no deeper than the parser allows, with no lone
    surrogate (every string must encode to UTF-8 for the agent and the guest); anything else
    is ``invalid_argument``, never an internal error."""
    try:
        msg = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConnectError("invalid_argument", "the message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise ConnectError("invalid_argument", "the message must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then the (bounded) re-encoding check
        try:
            json.dumps(msg, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ConnectError("invalid_argument", "the message holds a lone surrogate") from None
    return msg


async def _body(request: Request, limit: int) -> bytes:
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ConnectError("resource_exhausted", f"request message over {limit} bytes")
    return bytes(buf)


def _check_content_type(request: Request, want: str) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != want:
        raise ConnectError("invalid_argument", f"content-type must be {want} (JSON codec only)")


async def read_unary(request: Request) -> Message:
    """The request message of a unary call (``application/json``)."""
    _check_content_type(request, "application/json")
    if request.headers.get("content-encoding", "identity") not in ("identity", ""):
        raise ConnectError("unimplemented", "compressed requests are not supported")
    return decode_message(await _body(request, MAX_MESSAGE))


class _PacedBody:
    """A stream's request body, each message paced by the upload rule (``body_cap.Pace``): the
    time spent waiting for a message's bytes may not pass ``base_s`` plus one second per
    ``WARREN_BODY_MIN_UPLOAD_RATE_KIB_S`` KiB of it; the clock starts again for the next one.
    Past it the call ends with ``deadline_exceeded`` and its stream slot comes back."""

    def __init__(self, request: Request, base_s: float) -> None:
        settings = state_of(request).settings
        self.receive, self.base_s = request.receive, base_s
        self.rate = float(settings.body_min_upload_rate_kib_s * 1024)
        self.pace = Pace(base_s, self.rate)
        self.more = True

    def next_message(self) -> None:
        self.pace = Pace(self.base_s, self.rate)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.more:
            try:
                message = await self.pace.receive(self.receive)
            except TimeoutError:
                raise ConnectError(
                    "deadline_exceeded",
                    f"the request message did not arrive in time ({self.base_s:g} s, plus one second "
                    f"per {int(self.rate) >> 10} KiB of it)",
                ) from None
            if message["type"] != "http.request":
                return  # the client went away
            self.more = bool(message.get("more_body", False))
            yield message.get("body", b"")


def server_stream_pace(request: Request) -> float:
    """A server stream's one request message: the JSON body's deadline."""
    return float(state_of(request).settings.body_read_timeout_s)


def client_stream_pace(request: Request) -> float:
    """Each message of a client stream (``StreamInput``): ``IDLE_DEADLINES`` body deadlines."""
    return IDLE_DEADLINES * server_stream_pace(request)


async def read_envelopes(request: Request, base_s: float) -> AsyncIterator[Message]:
    """The request messages of a streaming call, one envelope at a time, as they arrive, each
    within ``base_s`` and the upload pace (``_PacedBody``)."""
    _check_content_type(request, "application/connect+json")
    body = _PacedBody(request, base_s)
    buf = bytearray()
    async for chunk in body:
        buf += chunk
        while len(buf) >= 5:
            flags, size = buf[0], int.from_bytes(buf[1:5], "big")
            if size > MAX_MESSAGE:
                raise ConnectError("resource_exhausted", f"request message over {MAX_MESSAGE} bytes")
            if flags & FLAG_COMPRESSED:
                raise ConnectError("unimplemented", "compressed messages are not supported")
            if len(buf) < 5 + size:
                break
            payload = bytes(buf[5 : 5 + size])
            del buf[: 5 + size]
            body.next_message()
            if flags & FLAG_END_STREAM:
                return
            yield decode_message(payload)
        if len(buf) > MAX_MESSAGE + 5:
            raise ConnectError("resource_exhausted", f"request message over {MAX_MESSAGE} bytes")
    if buf:
        raise ConnectError("invalid_argument", "truncated envelope at the end of the request")


async def read_one_envelope(request: Request) -> Message:
    """The single request message of a server-streaming call, within the JSON body deadline."""
    async for msg in read_envelopes(request, server_stream_pace(request)):
        return msg
    raise ConnectError("invalid_argument", "no request message")


def envelope(msg: Message, flags: int = 0) -> bytes:
    payload = json.dumps(msg, separators=(",", ":")).encode()
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def end_stream(err: ConnectError | None = None) -> bytes:
    return envelope({"error": err.body()} if err is not None else {}, FLAG_END_STREAM)


# A unary handler answers a message (sent as one JSON body), or a response of its own: a big
# answer streamed as it is encoded (filesystem.list_dir).
UnaryHandler = Callable[[Any, Message], Awaitable[Message | Response]]
StreamHandler = Callable[[Any, Message], AsyncIterator[Message]]


def stream_response(
    messages: AsyncIterator[Message],
    on_error: Callable[[BaseException], None],
    *,
    final: Callable[[Message], bool] | None = None,
) -> Response:
    """A server stream: each message an envelope as it comes, then the end-of-stream envelope
    (with the error, if the handler raised). The body is produced as the client reads it, so a
    slow reader holds the handler back (backpressure) instead of growing a buffer.

    A message ``final`` says is the handler's last (a process's end) goes out with the
    end-of-stream envelope, once the handler has finished (its clean-up, no waiting): the same
    bytes in one chunk, one write here and one read for the client instead of two each."""

    async def body() -> AsyncIterator[bytes]:
        held = b""
        try:
            async for msg in messages:
                if held:  # not the last after all
                    yield held
                    held = b""
                if final is not None and final(msg):
                    held = envelope(msg)
                    continue
                yield envelope(msg)
        except Exception as exc:  # every failure becomes the stream's error
            on_error(exc)
            yield held + end_stream(as_connect_error(exc))
            return
        yield held + end_stream()

    return StreamingResponse(body(), media_type="application/connect+json")
