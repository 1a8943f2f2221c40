"""The SDK's one implementation, and the two thin transports that run it.

Every operation is written ONCE as a generator (an *op*) that yields effects — "send this HTTP
request", "receive a WebSocket frame", "call the user's callback" — and gets each result back.
The op holds all the logic (URLs, bodies, decoding, error rules); it does no I/O itself.
:class:`SyncTransport` runs ops with ``httpx.Client`` and ``websockets.sync``;
:class:`AsyncTransport` runs the very same ops with ``httpx.AsyncClient`` and
``websockets.asyncio``. ``Sandbox`` and ``AsyncSandbox`` are just the two ways of driving them,
so the sync SDK blocks without a hidden event loop or thread, and the async SDK never blocks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from warren.sdk._config import ConnectionConfig
from warren.sdk._exceptions import (
    InvalidArgumentError,
    StreamError,
    WarrenError,
    WarrenTimeoutError,
    aerror_body,
    error_body,
    error_from_response,
)
from warren.sdk._ws_open import open_async, open_sync
from warren.url_path import PathSegmentError

__all__ = [
    "AsyncTransport",
    "Call",
    "Http",
    "HttpResult",
    "Op",
    "Sleep",
    "StreamClose",
    "StreamRead",
    "SyncTransport",
    "Upload",
    "WsClose",
    "WsOpen",
    "WsRecv",
    "WsSend",
    "awaiting",
    "blocking",
]

R = TypeVar("R")
P = ParamSpec("P")
S = TypeVar("S")

UPLOAD_CHUNK = 1024 * 1024
# httpx writes a request's headers and body separately; with Nagle's algorithm the body then
# waits for the server's (delayed) ACK of the headers: ~40 ms on every small POST.
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_USER_AGENT = "warren-python-sdk/0.1"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process, shared by every client the SDK opens.

    httpx builds a new one for each client it is not handed one (loading the CA bundle: ~20 ms
    here), and ``Sandbox.create`` opens a client per sandbox: it was two thirds of a create from a
    warm pool. A context is safe to share between threads and clients; ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` are read when the first client is made."""
    return httpx.create_ssl_context()


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


# ----------------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Upload:
    """A streamed request body: ``head`` + the bytes of ``source`` + ``tail``.

    ``source`` may be bytes, str, a binary file object, an iterable of bytes, or (async
    transport only) an async iterable / an object with an ``async read``. ``progress`` is
    called with each chunk's size as it is sent.
    """

    head: bytes
    source: Any
    tail: bytes
    content_type: str
    progress: Callable[[int], Any] | None = None


@dataclass(frozen=True)
class Http:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    upload: Upload | None = None
    timeout: Any = DEFAULT  # seconds; DEFAULT = the client's request_timeout; None = unlimited
    # A floor for the deadline (e.g. a command's own time limit plus slack).
    min_timeout: float | None = None
    # True: the result is an open body stream for StreamRead/StreamClose (error statuses are
    # still raised before it is returned).
    stream: bool = False


@dataclass(frozen=True)
class HttpResult:
    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.content) if self.content else None


@dataclass(frozen=True)
class StreamRead:
    stream: Any


@dataclass(frozen=True)
class StreamClose:
    stream: Any


@dataclass(frozen=True)
class WsOpen:
    path: str
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class WsSend:
    conn: Any
    message: dict[str, Any]


@dataclass(frozen=True)
class WsRecv:
    """The next JSON frame as a dict, or None once the server has closed the socket."""

    conn: Any
    timeout: float | None = None


@dataclass(frozen=True)
class WsClose:
    conn: Any


@dataclass(frozen=True)
class Call:
    """Call a user callback; the async transport awaits it when it returns an awaitable."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = Http | StreamRead | StreamClose | WsOpen | WsSend | WsRecv | WsClose | Call | Sleep
Op = Generator[Effect, Any, R]


# ------------------------------------------------------------------------------ shared helpers


def _timeout(cfg: ConnectionConfig, value: Any, floor: float | None = None) -> float | None:
    t = cfg.request_timeout if value is DEFAULT else value
    if not t:
        return None
    return max(t, floor) if floor else t


def _headers(cfg: ConnectionConfig) -> dict[str, str]:
    return {"User-Agent": _USER_AGENT, **cfg.auth_headers()}


def _ws_uri(cfg: ConnectionConfig, eff: WsOpen) -> str:
    uri = cfg.ws_url + eff.path
    if eff.params:
        uri += "?" + httpx.QueryParams(eff.params).__str__()
    return uri


def _ws_error(exc: Exception) -> WarrenError:
    if isinstance(exc, InvalidStatus):
        return error_from_response(exc.response.status_code, bytes(exc.response.body or b""))
    if isinstance(exc, (OSError, InvalidHandshake)):
        return WarrenError(f"cannot open the exec stream: {exc}", code="connection_error")
    return WarrenError(str(exc), code="stream_error")


def _decode_frame(raw: str | bytes) -> dict[str, Any]:
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        raise StreamError("the server sent a malformed frame", code="stream_error") from exc
    if not isinstance(msg, dict):
        raise StreamError("the server sent a malformed frame", code="stream_error")
    return msg


def _http_error(exc: httpx.HTTPError, cfg: ConnectionConfig) -> WarrenError:
    if isinstance(exc, httpx.TimeoutException):
        return WarrenTimeoutError(f"request timed out: {exc}", code="request_timeout")
    if isinstance(exc, httpx.ConnectError):
        return WarrenError(f"cannot reach Warren at {cfg.url}: {exc}", code="connection_error")
    # A body that stops before its declared end (connection cut, chunked encoding not finished)
    # means the server aborted the stream: never hand back a silently short result.
    return StreamError(f"the connection broke mid-stream: {exc!r}", code="stream_interrupted")


def _iter_upload(up: Upload) -> Iterator[bytes]:
    yield up.head
    src = up.source
    if isinstance(src, str):
        src = src.encode()
    if isinstance(src, (bytes, bytearray, memoryview)):
        view = memoryview(src)
        for i in range(0, len(view), UPLOAD_CHUNK):
            chunk = bytes(view[i : i + UPLOAD_CHUNK])
            if up.progress:
                up.progress(len(chunk))
            yield chunk
    elif hasattr(src, "read"):
        while True:
            chunk = src.read(UPLOAD_CHUNK)
            if not chunk:
                break
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if up.progress:
                up.progress(len(chunk))
            yield chunk
    else:
        for chunk in src:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if chunk:
                if up.progress:
                    up.progress(len(chunk))
                yield bytes(chunk)
    yield up.tail


async def _aiter_upload(up: Upload) -> AsyncIterator[bytes]:
    src = up.source
    if hasattr(src, "__aiter__") or (hasattr(src, "read") and inspect.iscoroutinefunction(src.read)):
        yield up.head
        if hasattr(src, "__aiter__"):
            async for chunk in src:
                if isinstance(chunk, str):
                    chunk = chunk.encode()
                if chunk:
                    if up.progress:
                        up.progress(len(chunk))
                    yield bytes(chunk)
        else:
            while True:
                chunk = await src.read(UPLOAD_CHUNK)
                if not chunk:
                    break
                if up.progress:
                    up.progress(len(chunk))
                yield chunk if isinstance(chunk, bytes) else bytes(chunk)
        yield up.tail
        return
    # A plain file or iterator: local disk reads of 1 MiB are short enough to do inline.
    for piece in _iter_upload(up):
        yield piece


@dataclass
class _BodyStream:
    """An open response body; ``chunks`` is httpx's raw (un-decoded) chunk iterator."""

    response: httpx.Response
    chunks: Any


def _raise_status(status: int, content: bytes) -> None:
    if status >= 400:
        raise error_from_response(status, content)


def _build_request(
    client: httpx.Client | httpx.AsyncClient, e: Http, cfg: ConnectionConfig, content: Any
) -> httpx.Request:
    """The request for ``e``; ``content`` is the sync or async upload body (None without one)."""
    return client.build_request(
        e.method,
        e.path,
        json=e.json,
        params=e.params,
        content=content,
        headers={"Content-Type": e.upload.content_type} if e.upload else None,
        timeout=_timeout(cfg, e.timeout, e.min_timeout),
    )


def _http_result(resp: httpx.Response, content: bytes) -> HttpResult:
    _raise_status(resp.status_code, content)
    return HttpResult(resp.status_code, content, dict(resp.headers))


def _stream_closed() -> StreamError:
    return StreamError("the exec stream closed", code="stream_closed")


def _recv_timeout() -> WarrenTimeoutError:
    return WarrenTimeoutError("timed out waiting for the command", code="timeout")


# ---------------------------------------------------------------------------------- transports


def _client_options(cfg: ConnectionConfig) -> dict[str, Any]:
    """The httpx client options both transports share (the transport itself differs)."""
    return {"base_url": cfg.url, "headers": _headers(cfg), "timeout": _timeout(cfg, DEFAULT)}


def _step(op: Op[Any], value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Resume ``op`` with the last effect's value or error: (True, its result) once it returns,
    else (False, the next effect to perform)."""
    try:
        return False, op.throw(error) if error is not None else op.send(value)
    except StopIteration as stop:
        return True, stop.value
    except PathSegmentError as e:  # a caller's ID or name that would leave its path segment
        raise InvalidArgumentError(str(e), code="invalid_argument") from None


class SyncTransport:
    """Runs ops with blocking I/O in the calling thread."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(verify=_tls_context(), socket_options=_SOCKET_OPTIONS),
            **_client_options(config),
        )

    def close(self) -> None:
        self._client.close()

    def run(self, op: Op[R]) -> R:
        value: Any = None
        error: BaseException | None = None
        while True:
            done, out = _step(op, value, error)
            if done:
                result: R = out
                return result
            value, error = None, None
            try:
                value = self._perform(out)
            except BaseException as exc:  # handed to the op, which may handle or re-raise it
                error = exc

    def iterate(self, op_factory: Callable[[], Op[bytes | None]]) -> Iterator[bytes]:
        """Drive ``op_factory()`` repeatedly as a generator of chunks until it returns None."""
        while True:
            chunk = self.run(op_factory())
            if chunk is None:
                return
            yield chunk

    def _perform(self, e: Effect) -> Any:
        cfg = self.config
        if isinstance(e, Http):
            try:
                body = _iter_upload(e.upload) if e.upload else None
                req = _build_request(self._client, e, cfg, body)
                resp = self._client.send(req, stream=True)
            except httpx.HTTPError as exc:
                raise _http_error(exc, cfg) from exc
            if e.stream and resp.status_code < 400:
                return _BodyStream(resp, resp.iter_raw())
            try:
                content = resp.read() if resp.status_code < 400 else error_body(resp.iter_bytes())
            except httpx.HTTPError as exc:
                raise _http_error(exc, cfg) from exc
            finally:
                resp.close()
            return _http_result(resp, content)
        if isinstance(e, StreamRead):
            try:
                return next(e.stream.chunks)
            except StopIteration:
                return b""
            except httpx.HTTPError as exc:
                raise _http_error(exc, cfg) from exc
        if isinstance(e, StreamClose):
            e.stream.response.close()
            return None
        if isinstance(e, WsOpen):
            try:
                return open_sync(_ws_uri(cfg, e), _headers(cfg), _timeout(cfg, DEFAULT))
            except (InvalidHandshake, OSError, TimeoutError, ValueError) as exc:
                raise _ws_error(exc) from exc
        if isinstance(e, WsSend):
            try:
                e.conn.send(json.dumps(e.message))
            except ConnectionClosed as exc:
                raise _stream_closed() from exc
            return None
        if isinstance(e, WsRecv):
            try:
                raw = e.conn.recv(timeout=e.timeout)
            except ConnectionClosed:
                return None
            except TimeoutError as exc:
                raise _recv_timeout() from exc
            return _decode_frame(raw)
        if isinstance(e, WsClose):
            e.conn.close()
            return None
        if isinstance(e, Call):
            return e.fn(*e.args)
        if isinstance(e, Sleep):
            time.sleep(e.seconds)
            return None
        raise TypeError(f"unknown effect {e!r}")


class AsyncTransport:
    """Runs the same ops on the running asyncio event loop."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(verify=_tls_context(), socket_options=_SOCKET_OPTIONS),
            **_client_options(config),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def run(self, op: Op[R]) -> R:
        value: Any = None
        error: BaseException | None = None
        while True:
            done, out = _step(op, value, error)
            if done:
                result: R = out
                return result
            value, error = None, None
            try:
                value = await self._perform(out)
            except BaseException as exc:
                error = exc

    async def iterate(self, op_factory: Callable[[], Op[bytes | None]]) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.run(op_factory())
            if chunk is None:
                return
            yield chunk

    async def _perform(self, e: Effect) -> Any:
        cfg = self.config
        if isinstance(e, Http):
            try:
                body = _aiter_upload(e.upload) if e.upload else None
                req = _build_request(self._client, e, cfg, body)
                resp = await self._client.send(req, stream=True)
            except httpx.HTTPError as exc:
                raise _http_error(exc, cfg) from exc
            if e.stream and resp.status_code < 400:
                return _BodyStream(resp, resp.aiter_raw())
            try:
                if resp.status_code < 400:
                    content = await resp.aread()
                else:
                    content = await aerror_body(resp.aiter_bytes())
            except httpx.HTTPError as exc:
                raise _http_error(exc, cfg) from exc
            finally:
                await resp.aclose()
            return _http_result(resp, content)
        if isinstance(e, StreamRead):
            try:
                return await e.stream.chunks.__anext__()
            except StopAsyncIteration:
                return b""
            except httpx.HTTPError as exc:
                raise _http_error(exc, cfg) from exc
        if isinstance(e, StreamClose):
            await e.stream.response.aclose()
            return None
        if isinstance(e, WsOpen):
            try:
                return await open_async(_ws_uri(cfg, e), _headers(cfg), _timeout(cfg, DEFAULT))
            except (InvalidHandshake, OSError, TimeoutError, ValueError) as exc:
                raise _ws_error(exc) from exc
        if isinstance(e, WsSend):
            try:
                await e.conn.send(json.dumps(e.message))
            except ConnectionClosed as exc:
                raise _stream_closed() from exc
            return None
        if isinstance(e, WsRecv):
            try:
                raw = await asyncio.wait_for(e.conn.recv(), e.timeout)
            except ConnectionClosed:
                return None
            except TimeoutError as exc:
                raise _recv_timeout() from exc
            return _decode_frame(raw)
        if isinstance(e, WsClose):
            await e.conn.close()
            return None
        if isinstance(e, Call):
            out = e.fn(*e.args)
            if inspect.isawaitable(out):
                out = await out
            return out
        if isinstance(e, Sleep):
            await asyncio.sleep(e.seconds)
            return None
        raise TypeError(f"unknown effect {e!r}")


# ----------------------------------------------------------- turning ops into public methods


def blocking(fn: Callable[Concatenate[S, P], Op[R]]) -> Callable[Concatenate[S, P], R]:
    """A method of a sync class that runs the op ``fn`` on ``self._transport``."""

    @functools.wraps(fn)
    def method(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        transport: SyncTransport = self._transport  # type: ignore[attr-defined]
        return transport.run(fn(self, *args, **kwargs))

    return method


def awaiting(fn: Callable[Concatenate[S, P], Op[R]]) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """A coroutine method of an async class that runs the op ``fn`` on ``self._transport``."""

    @functools.wraps(fn)
    async def method(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        transport: AsyncTransport = self._transport  # type: ignore[attr-defined]
        return await transport.run(fn(self, *args, **kwargs))

    return method
