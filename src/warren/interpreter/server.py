"""The HTTP side: the standard library's ``ThreadingHTTPServer`` (one thread per connection, at
most :data:`MAX_CONNECTIONS`), HTTP/1.1 with keep-alive, ``/execute`` streamed as chunked NDJSON.

Errors are ``{"code": <status>, "message": <str>}`` (E2B's API shape); the SDK maps 404 to
``NotFoundException`` and shows the body of anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import MSG_PEEK, socket
from typing import Any

from warren.interpreter import outputs
from warren.interpreter.contexts import Context, Contexts, InterpreterError, check_env, check_language

log = logging.getLogger("warren.interpreter")

MAX_BODY = 8 << 20  # a request body (the code of a cell, with its env)
MAX_CODE = 4 << 20
MAX_CONNECTIONS = 64
IDLE_S = 300.0  # a connection quiet this long (reading, or a client not reading) is closed
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class InterpreterServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], contexts: Contexts) -> None:
        self.contexts = contexts
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _ClientGone(Exception):
    pass


def _closed(sock: socket) -> bool:
    """Whether the peer closed (or reset) the connection; a request it pipelined is not that."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: InterpreterServer
    timeout = IDLE_S

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------------------- routes

    def do_GET(self) -> None:
        self._route({"/health": self._health, "/contexts": self._list})

    def do_POST(self) -> None:
        self._route({"/execute": self._execute, "/contexts": self._create}, suffix={"restart": self._restart})

    def do_DELETE(self) -> None:
        self._route({}, suffix={"": self._remove})

    def _route(
        self,
        exact: dict[str, Callable[[], None]],
        suffix: dict[str, Callable[[str], None]] | None = None,
    ) -> None:
        path = self.path.split("?", 1)[0]
        self._body_done = False
        try:
            if path in exact:
                exact[path]()
                return
            parts = path.strip("/").split("/")
            if suffix is not None and parts[0] == "contexts" and len(parts) in (2, 3):
                action = parts[2] if len(parts) == 3 else ""
                if action in suffix:
                    suffix[action](parts[1])
                    return
            raise InterpreterError(404, f"no route {self.command} {path[:200]}")
        except InterpreterError as e:
            self._drain_body()
            self._json(e.status, {"code": e.status, "message": e.message})
        except _ClientGone:
            self.close_connection = True

    def _health(self) -> None:
        if self.server.contexts.ready():
            self._json(200, {"status": "ok"})
        else:
            self._json(503, {"code": 503, "message": "the default context is starting"})

    def _list(self) -> None:
        self._json(200, [c.view() for c in self.server.contexts.list()])

    def _create(self) -> None:
        body = self._body()
        language, cwd = body.get("language"), body.get("cwd")
        if not isinstance(language, str | None) or not isinstance(cwd, str | None):
            raise InterpreterError(400, "language and cwd must be strings")
        self._json(200, self.server.contexts.create(language, cwd).view())

    def _restart(self, context_id: str) -> None:
        self._drain_body()
        self.server.contexts.get(context_id).restart()
        self._json(200, {})

    def _remove(self, context_id: str) -> None:
        self._drain_body()
        self.server.contexts.remove(context_id)
        self._json(200, {})

    def _execute(self) -> None:
        body = self._body()
        code, context_id, language = body.get("code"), body.get("context_id"), body.get("language")
        if not isinstance(code, str) or len(code) > MAX_CODE:
            raise InterpreterError(400, f"code must be a string of at most {MAX_CODE} characters")
        if not isinstance(context_id, str | None) or not isinstance(language, str | None):
            raise InterpreterError(400, "context_id and language must be strings")
        env = check_env(body.get("env_vars"))
        if context_id:
            ctx = self.server.contexts.get(context_id)
        else:
            check_language(language)
            ctx = self.server.contexts.default()
        with ctx.lock:
            if ctx.closed:
                raise InterpreterError(404, f"context {ctx.id} was removed")
            self._stream(ctx, code, env)

    def _stream(self, ctx: Context, code: str, env: dict[str, str]) -> None:
        gone = False

        def client_gone() -> bool:
            return gone or _closed(self.connection)

        events = ctx.execute(code, env, client_gone)  # refusals come before the answer starts
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                if gone:
                    continue  # drain: the kernel was interrupted, the execution ends on its own
                try:
                    self._chunk(event)
                except OSError:
                    gone = True
                    ctx.interrupt()
        except Exception as e:  # the answer has started: say it in the stream, end it properly
            log.exception("event=execution_failed context=%s", ctx.id)
            if not gone:
                with contextlib.suppress(OSError):
                    self._chunk(outputs.error("InterpreterError", f"the execution failed: {e}", []))
        if gone:
            raise _ClientGone
        try:
            self._chunk(outputs.END)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            raise _ClientGone from None

    # ------------------------------------------------------------------------------ plumbing

    def _chunk(self, event: outputs.Event) -> None:
        data = json.dumps(event, ensure_ascii=False).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        try:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _body(self) -> dict[str, Any]:
        raw = self._read_body()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise InterpreterError(400, "the body is not JSON") from None
        if not isinstance(value, dict):
            raise InterpreterError(400, "the body must be a JSON object")
        return value

    def _read_body(self) -> bytes:
        self._body_done = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_s = self.headers.get("Content-Length", "0").strip()
        if not length_s.isdigit():
            self.close_connection = True
            raise InterpreterError(400, "bad Content-Length")
        length = int(length_s)
        if length > MAX_BODY:
            self.close_connection = True  # the unread body makes the connection unusable
            raise InterpreterError(413, f"the body is larger than {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024).strip().split(b";", 1)[0]
            try:
                size = int(line, 16)
            except ValueError:
                self.close_connection = True
                raise InterpreterError(400, "bad chunked body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers
                return bytes(out)
            if len(out) + size > MAX_BODY:
                self.close_connection = True
                raise InterpreterError(413, f"the body is larger than {MAX_BODY} bytes")
            out += self.rfile.read(size)
            self.rfile.readline(16)

    def _drain_body(self) -> None:
        """Read an unread body, so the connection can serve the next request (or close it)."""
        if self._body_done:
            return
        try:
            self._read_body()
        except InterpreterError:
            self.close_connection = True
