"""Where an E2B request goes (docs/e2b.md §1).

1. An ``E2b-Sandbox-Id`` header: the in-sandbox plane of that sandbox, on the port in
   ``E2b-Sandbox-Port`` (49983 is envd, Warren's translation of E2B's in-sandbox API; any other
   port goes through the preview proxy to a server in the sandbox).
2. Else a host name ``{port}-{sandbox_id}.{preview_domain}``: the same, by host.
3. Else the control API (``/sandboxes``, ``/v2/sandboxes``, ``/snapshots``, ...).

Both planes serve ``GET /health``, so the header decides first.

The control API and envd read request bodies through the main port's body cap, on the same
per-process budget (cp/body_cap.py): a JSON body is read whole, charged and timed before the
route runs; envd's ``POST /files`` upload streams, charged a window and paced (and capped in
all by the route); its Connect streams (``application/connect+json``: a process's stdin may idle
for minutes) read their own bodies after authentication, each message paced by the same rule
(``cp/e2b/envd/connect.py``). A sandbox port's traffic is relayed as it comes, like the main
port's preview proxy.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from warren.cp.body_cap import BUFFER, OWN, BodyCapMiddleware, Handling, Rules, Streamed
from warren.cp.e2b.control import control_app
from warren.cp.e2b.envd import ENVD_PORT, envd_app
from warren.cp.e2b.envd.connect import MAX_MESSAGE
from warren.cp.e2b.envd.files import files_without_sandbox
from warren.cp.e2b.errors import e2b_error
from warren.cp.e2b.ports import port_app
from warren.cp.observe import ObserveMiddleware
from warren.cp.proxy.routing import route
from warren.cp.refusal_hold import RefusalHoldMiddleware
from warren.cp.state import AppState

# What one streamed envd upload holds in memory while it is read (see cp/body_cap.py).
UPLOAD_WINDOW = 256 * 1024


def _control_rules(path: str, content_type: str) -> Handling:
    return BUFFER  # JSON objects, within the CP's JSON cap (control/app.py)


def _envd_rules(path: str, content_type: str) -> Handling:
    if path == "/files":
        return Streamed(UPLOAD_WINDOW)  # each file capped by the route, any number of bytes in all
    if content_type.startswith("application/connect+json"):
        return OWN
    return BUFFER  # a unary Connect call: one message of up to MAX_MESSAGE


def _answer(status: int, code: str, message: str) -> Response:
    return e2b_error(status, message)  # E2B's shape: {"code": <status>, "message"}


def _answered_here(app: ASGIApp, state: AppState, rules: Rules, json_cap: int | None = None) -> ASGIApp:
    """A plane the CP answers itself (not a sandbox's port): bodies capped, and its refusals
    held past the client address's budget (``cp/refusal_hold.py``), as on the main port."""
    capped = BodyCapMiddleware(
        app, settings=state.settings, budget=state.body_budget, rules=rules, json_cap=json_cap, answer=_answer
    )
    return RefusalHoldMiddleware(capped, budget=state.refusal_budget)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


class E2BApp:
    """Dispatches each request to the control API, envd, or a sandbox port (see module doc).

    The sandbox id and port are put in ``scope["e2b"]`` as ``(sandbox_id, port)`` for the
    in-sandbox planes; a malformed id or port is passed on as-is for them to refuse (envd
    answers E2B's "sandbox was not found" 502, which is what the SDK expects).
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.control = _answered_here(control_app(state), state, _control_rules)
        self.envd = _answered_here(
            envd_app(state), state, _envd_rules, json_cap=max(MAX_MESSAGE, state.settings.max_json_body)
        )
        self.ports = port_app(state)
        self.signed_files = RefusalHoldMiddleware(files_without_sandbox, budget=state.refusal_budget)

    def target(self, scope: Scope) -> tuple[str, int] | None:
        sandbox_id = _header(scope, b"e2b-sandbox-id")
        if sandbox_id is not None:
            port_s = _header(scope, b"e2b-sandbox-port") or str(ENVD_PORT)
            port = int(port_s) if port_s.isdigit() and len(port_s) <= 5 else -1
            return sandbox_id.strip(), port
        domain = self.state.settings.preview_domain
        host = _header(scope, b"host") or ""
        if domain and host:
            r = route("/", host, domain, by_path=False)
            if r is not None:
                return r.sandbox_id, r.port
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.control(scope, receive, send)  # lifespan: the control app's (a no-op)
            return
        target = self.target(scope)
        if target is None and scope["path"] == "/files":
            await self.signed_files(scope, receive, send)  # a signed URL without its sandbox
            return
        if target is None:
            await self.control(scope, receive, send)
            return
        scope["e2b"] = target
        if target[1] == ENVD_PORT:
            await self.envd(scope, receive, send)
        else:
            await self.ports(scope, receive, send)


def create_e2b_app(state: AppState) -> ASGIApp:
    """The E2B listener's app, over the control plane's ``state`` (built by its lifespan), with
    the main port's request ids, client addresses and latency metrics (``cp/observe.py``)."""
    return ObserveMiddleware(E2BApp(state))


class _ByListener:
    """One process, two listeners: requests that arrived on ``port`` go to ``e2b``, the rest
    (and the lifespan, which builds the shared state) to ``main``."""

    def __init__(self, main: ASGIApp, e2b: ASGIApp, port: int) -> None:
        self.main = main
        self.e2b = e2b
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server is not None and server[1] == self.port:
            await self.e2b(scope, receive, send)
        else:
            await self.main(scope, receive, send)


def with_e2b_listener(main: ASGIApp, state: AppState, port: int) -> ASGIApp:
    """``main`` plus the E2B app for requests that arrive on TCP port ``port`` (the server must
    also listen there: ``warren cp --e2b-port``)."""
    return _ByListener(main, create_e2b_app(state), port)
