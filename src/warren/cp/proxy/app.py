"""The preview proxy (docs/networking.md §3): HTTP and WebSocket traffic to a port inside a
sandbox, routed by path (``/v1/sandboxes/{id}/ports/{port}/…``) or by host name
(``{port}-{id}.{preview_domain}``). The same code runs as a middleware in front of the CP's app
(:class:`PreviewMiddleware`) and alone as ``warren proxy`` (:func:`standalone_app`).

Per request: the sandbox (read by id, cached ``proxy_cache_s``), the access rules
(``services/preview.py``: public port, traffic token, signed URL or its cookie), the sandbox
running (or resumed), bounds on connections per sandbox, team and owning account
(``bounds.py``), then the exchange over the agent's data port (or DialPort: ``data.py``). Every
exchange is registered with ``services/stream_revocation.py`` and cut when what admitted it no
longer holds (:meth:`Proxy._revocable`): the credential revoked or, a signed URL's or its
cookie's, expired; for a public port's visitor, the port made private; for both, the sandbox
paused or gone.
The proxy strips the traffic token, the signed URL's parameters and the platform's cookies
(``cookies.py``) and credentials (``credentials.py``) before anything reaches the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

import h11
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from warren import clock
from warren.config import Settings
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.hosts.narrow_channel import close_channels
from warren.cp.http_errors import error_response, status_and_code
from warren.cp.proxy import bounds, cookies, credentials, pace, ws
from warren.cp.proxy.data import open_stream
from warren.cp.proxy.http import ClientGone, Upstream, UpstreamError
from warren.cp.proxy.routing import Route, hop_by_hop, route
from warren.cp.proxy.stream import ByteStream
from warren.cp.refusal_hold import ANONYMOUS_PREVIEW_REFUSALS, counted_refusal, hold_refusal
from warren.cp.services import preview, rate_limits, stream_revocation
from warren.cp.services.traffic_tokens import token_hash
from warren.errors import AgentError, WarrenError

log = logging.getLogger("warren.proxy")

# Everything a preview page may need except its own origin (no allow-same-origin): see
# docs/networking.md §3, "Path routing and the control plane's origin".
PATH_ROUTED_CSP = (
    b"content-security-policy",
    b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads",
)

# One client address holds at most 1/CLIENT_SHARE of a sandbox's proxied connections, and never
# fewer than CLIENT_FLOOR (or the whole cap, when it is smaller): session 14, a public port's
# server is anyone's to call, and 128 slow readers from one address kept every other visitor of
# that sandbox at 429. A browser opens about 6 connections per host.
CLIENT_SHARE, CLIENT_FLOOR = 4, 32
_MAX_TOKEN = 128  # of a token, what preview.authorize hashes (its _MAX_TOKEN): the same here

# The proxy's credentials, and forwarding headers a client could forge (the proxy sets them).
_STRIP = frozenset({preview.TOKEN_HEADER.encode(), b"x-forwarded-for", b"x-forwarded-proto",
                    b"x-forwarded-host", b"x-forwarded-prefix", b"forwarded"})  # fmt: skip
# The signed URL's parameter name as a query may spell it, any character percent-encoded (a
# regular expression is ~20x cheaper than parsing every query that has a "%").
_SIG_SPELLINGS = b"".join(b"(?:%s|%%%02x)" % (re.escape(bytes([c])), c) for c in preview.SIG_PARAM.encode())
_SIG_KEY = re.compile(b"(?:^|&)" + _SIG_SPELLINGS + b"=", re.IGNORECASE)
# Headers whose value is looked at: the platform's cookies and credentials are taken out.
_INSPECT = credentials.HEADERS | {b"cookie"}


class _Later(Exception):
    """One of ``ANONYMOUS_PREVIEW_REFUSALS``, answered once the request's connection slot is
    released (:meth:`Proxy.__call__`): a held answer never keeps the sandbox's slot."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.answer = (status, code, message)


def _upstream_error(e: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for what failed before the sandbox's response started."""
    if isinstance(e, AgentError):
        if e.rpc_code == "UNAVAILABLE" and "port_not_open" in e.message:
            return 502, "port_not_open", e.message.removeprefix("port_not_open: ")
        if e.rpc_code == "FAILED_PRECONDITION":
            return 409, "sandbox_paused", "the sandbox is not running"
        if e.rpc_code == "RESOURCE_EXHAUSTED":
            return 429, "too_many_connections", e.message
        if e.rpc_code == "NOT_FOUND":
            return 404, "not_found", "sandbox not found"
        return 502, "agent_error", e.message
    if isinstance(e, WarrenError):
        status, code = status_and_code(e)
        return status, code, e.message
    if isinstance(e, TimeoutError):
        return 504, "upstream_timeout", "the sandbox's port did not connect in time"
    if isinstance(e, UpstreamError | h11.ProtocolError | ConnectionError):
        return 502, "upstream_error", f"the sandbox's server broke the exchange: {e}"
    raise e


class Proxy:
    """One per process: the upstream pool, the sandbox cache and the per-sandbox counters."""

    def __init__(self, settings: Settings, *, budget: rate_limits.RefusalBudget | None = None) -> None:
        self.settings = settings
        # The refusals per client address (cp/refusal_hold.py): the CP's, or one of its own.
        self.budget = budget or rate_limits.RefusalBudget.from_settings(settings)
        self.secret = settings.require_jwt_secret()
        self.cache = preview.make_cache(settings.proxy_cache_s)
        self.upstream = Upstream()
        self._open: dict[str, int] = {}
        self._by_client: dict[tuple[str, str], int] = {}  # (sandbox id, client address)

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await close_channels()

    def error_response(self, scope: Scope, status: int, code: str, message: str) -> Response:
        """The answer to a request the proxy refuses or cannot forward: Warren's envelope (the
        E2B listener's proxy answers in E2B's shape instead: cp/e2b/ports.py)."""
        return error_response(status, code, message)

    def route_of(self, scope: Scope) -> Route | None:
        host = ""
        if self.settings.preview_domain:
            for k, v in scope["headers"]:
                if k == b"host":
                    host = v.decode("latin-1")
                    break
        r = route(scope["path"], host, self.settings.preview_domain, by_path=self.settings.proxy_path_routing)
        raw: bytes | None = scope.get("raw_path")
        if r is not None and not r.by_host and raw is not None and not raw.startswith(r.prefix.encode()):
            # The sandbox and port were spelled with %2F and the like, which the server decodes
            # before routing: a client's quoted ID ("sb-…%2Fports%2F8000") is not a port's path
            # (session 37: it carried another team's request into a stranger's public port).
            return None
        return r

    async def __call__(
        self, r: Route, scope: Scope, receive: Receive, send: Send, engine: AsyncEngine, pool: HostClientPool
    ) -> None:
        websocket = scope["type"] == "websocket"
        try:
            target, signed, grant, creds = await self._admit(r, scope, engine)
        except Exception as e:
            await self._refuse(scope, receive, send, *_upstream_error(e))
            return
        if signed and not websocket:
            await self._redirect(r, scope, target, receive, send)
            return
        anonymous = grant.kind == "public"
        try:
            target = await preview.ensure_running(engine, pool, self.cache, target)
            target.client(pool)  # 503 host_unavailable now rather than mid-exchange
        except Exception as e:
            await self._refuse(scope, receive, send, *_upstream_error(e), anonymous=anonymous)
            return
        # Only a signed URL or a cookie expires: the token and a public visit pay no call.
        expires = _expiry(creds, signed, grant) if signed or creds.cookie is not None else None
        sid = target.sandbox_id
        key = (sid, _client_address(scope, self.settings.trusted_proxies))
        if (refusal := self._full(sid, key)) is not None:
            await self._refuse(scope, receive, send, 429, "too_many_connections", refusal)
            return
        s = self.settings
        counted = bounds.claim(
            target.team_id,
            target.owner_id,
            per_team=s.proxy_max_conns_per_team,
            per_owner=s.proxy_max_conns_per_owner,
            anonymous=anonymous,
        )
        if isinstance(counted, str):
            await self._refuse(scope, receive, send, 429, "too_many_connections", counted)
            return
        self._open[sid] = self._open.get(sid, 0) + 1
        self._by_client[key] = self._by_client.get(key, 0) + 1
        try:
            with pace.shared(counted.pace_key):
                await self._revocable(grant, r, scope, receive, send, target, pool, expires=expires)
        except _Later as later:
            answer = later.answer
        else:
            return
        finally:
            counted.release()
            _drop_one(self._open, sid)
            _drop_one(self._by_client, key)
        await self._refuse(scope, receive, send, *answer, anonymous=anonymous, connected=websocket)

    def _full(self, sid: str, key: tuple[str, str]) -> str | None:
        """Why one more connection to sandbox ``sid`` from this client is refused, or None."""
        limit = self.settings.proxy_max_conns_per_sandbox
        if self._open.get(sid, 0) >= limit:
            return f"at most {limit} proxied connections per sandbox at once"
        share = min(limit, max(CLIENT_FLOOR, limit // CLIENT_SHARE))
        if self._by_client.get(key, 0) >= share:
            return f"at most {share} proxied connections to one sandbox from one client address at once"
        return None

    async def _admit(
        self, r: Route, scope: Scope, engine: AsyncEngine
    ) -> tuple[preview.PreviewTarget, bool, stream_revocation.Grant, preview.Credentials]:
        """The sandbox, whether a signed URL admitted the request, what its admission rests on
        (the token hash that was checked, not a resume's fresh read of it) and the request's
        credentials. Whether the sandbox runs is asked next (``__call__``)."""
        target = await preview.lookup(engine, self.cache, r.sandbox_id)
        creds = _credentials(scope)
        signed = preview.authorize(target, r.port, creds, secret=self.secret)
        grant = preview.grant_of(target, r.port, signed)
        if grant.kind == "public" and creds.token is not None and _token_holds(target, creds.token):
            # A public port visited with the sandbox's token: a credentialed connection (session
            # 18), counted in the credentialed share and resting on the token, as on a private port.
            grant = target.grant
        return target, signed, grant, creds

    async def _exchange(
        self, r: Route, scope: Scope, receive: Receive, send: Send, target: preview.PreviewTarget,
        pool: HostClientPool,
    ) -> None:  # fmt: skip
        if scope["type"] == "websocket":
            await self._websocket(r, scope, receive, send, target, pool)
        else:
            await self._http(r, scope, receive, send, target.client(pool))

    async def _revocable(
        self, grant: stream_revocation.Grant, r: Route, scope: Scope, receive: Receive, send: Send,
        target: preview.PreviewTarget, pool: HostClientPool, *, expires: float | None = None,
    ) -> None:  # fmt: skip
        """The exchange, ended when ``grant`` stops holding (session 17: a member removed, a key
        revoked, the traffic token rotated; a public port made private; session 18: the sandbox
        paused) or ``expires`` (a signed URL's, session 18) past. Registering is in memory; the
        re-check is the process's one statement every ``RECHECK_S`` (at once after a change
        made here; an expiry it reads from memory). The revocation cancels this task, and only
        that cancel is taken back here (as ``asyncio.timeout`` does): a WebSocket then closes
        with 1008, a response under way is cut (the connection closed), one not started yet
        gets the reason's answer (:func:`_ended_answer`)."""
        sent = False

        async def sending(msg: Any) -> None:
            nonlocal sent
            sent = True
            await send(msg)

        task = asyncio.current_task()
        assert task is not None
        with stream_revocation.watching(grant, task.cancel, expires=expires) as w:
            try:
                await self._exchange(r, scope, receive, sending, target, pool)
            except asyncio.CancelledError:
                if not w.revoked or task.cancelling() > 1:
                    raise  # another cancel (the server stopping): not ours to take back
            finally:
                if w.revoked:  # ours, taken back however it ended (surfaced, or swallowed on the way)
                    task.uncancel()
        if not w.revoked:
            return
        log.info("event=proxy_revoked sandbox_id=%s port=%s why=%s", r.sandbox_id, r.port, w.why)
        status, code, message = _ended_answer(w.why, grant, r.port)
        if scope["type"] == "websocket" and sent:
            with contextlib.suppress(Exception):  # the client may be gone
                await send({"type": "websocket.close", "code": 1008, "reason": f"{status} {code}"})
        elif not sent:
            await self._deny(scope, receive, send, status, code, message, connected=True)
        # A response under way ends unfinished: the server closes its connection.

    async def _http(self, r: Route, scope: Scope, receive: Receive, send: Send, client: HostClient) -> None:
        started = False

        async def tracking_send(msg: Any) -> None:
            nonlocal started
            started = True
            if msg["type"] == "http.response.start" and not r.by_host:
                # A path-routed page is served from the control plane's own origin: sandboxed
                # (an opaque origin) its scripts cannot read the dashboard or ride its cookies,
                # and the cookies it sets stay on its own port's path (cookies.py).
                msg = {**msg, "headers": [*_set_cookies(msg.get("headers", ()), r.prefix), PATH_ROUTED_CSP]}
            elif msg["type"] == "http.response.start":
                msg = {**msg, "headers": _set_cookies(msg.get("headers", ()), None)}
            await send(msg)

        try:
            await self.upstream.forward(
                client, scope, receive, tracking_send, sandbox_id=r.sandbox_id, port=r.port,
                target=_target(r, scope), headers=_forward_headers(r, scope, self.secret),
            )  # fmt: skip
        except ClientGone:
            return
        except Exception as e:
            if started:
                log.info("event=proxy_cut sandbox_id=%s port=%s error=%s", r.sandbox_id, r.port, e)
                return
            status, code, message = _upstream_error(e)
            if code in ANONYMOUS_PREVIEW_REFUSALS:
                raise _Later(status, code, message) from e
            await self.error_response(scope, status, code, message)(scope, receive, send)

    async def _websocket(
        self,
        r: Route,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: preview.PreviewTarget,
        pool: HostClientPool,
    ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        stream: ByteStream | None = None
        try:
            try:
                stream = await open_stream(target.client(pool), target.sandbox_id, r.port)
                # Bounded: a server that never answers the upgrade kept the exchange, its dial
                # and the sandbox's slot long after the client had gone.
                async with asyncio.timeout(self.settings.ws_handshake_timeout_s):
                    up = await ws.handshake(
                        stream, host=_header(scope, b"host") or "localhost",
                        target=_target(r, scope).decode("latin-1"),
                        headers=_forward_headers(r, scope, self.secret, websocket=True),
                        subprotocols=ws.subprotocols_of(scope), max_size=self.settings.ws_max_message,
                    )  # fmt: skip
            except TimeoutError:
                wait = self.settings.ws_handshake_timeout_s
                message = f"the sandbox's server did not answer the upgrade in {wait:g} s"
                await self._deny(scope, receive, send, 504, "upstream_timeout", message, connected=True)
                return
            except ws.HandshakeFailed as e:
                await self._deny(scope, receive, send, 502, "websocket_refused", str(e), connected=True)
                return
            except Exception as e:
                status, code, message = _upstream_error(e)
                if code in ANONYMOUS_PREVIEW_REFUSALS:
                    raise _Later(status, code, message) from e
                await self._deny(scope, receive, send, status, code, message, connected=True)
                return
            await send({"type": "websocket.accept", "subprotocol": up.proto.subprotocol})
            await ws.relay(up, receive, send)
        finally:
            if stream is not None:
                await stream.aclose()

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str,
        *, anonymous: bool = False, connected: bool = False,
    ) -> None:  # fmt: skip
        """An answer of the proxy's own to a request that holds no slot (refused before it was
        admitted, or :class:`_Later`): :meth:`_deny`, held first past the client address's
        refusal budget when it counts (``refusal_hold.counted_refusal``). Nothing the sandbox's
        server answers comes here."""
        if counted_refusal(status, code, anonymous=anonymous):
            await hold_refusal(self.budget, _client_address(scope, self.settings.trusted_proxies))
        await self._deny(scope, receive, send, status, code, message, connected=connected)

    async def _deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        *,
        connected: bool = False,
    ) -> None:
        if scope["type"] == "http":
            await self.error_response(scope, status, code, message)(scope, receive, send)
            return
        if not connected and (await receive())["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            resp = self.error_response(scope, status, code, message)
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": resp.raw_headers}
            )
            await send({"type": "websocket.http.response.body", "body": resp.body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": f"{status} {code}"})

    async def _redirect(
        self, r: Route, scope: Scope, target: preview.PreviewTarget, receive: Receive, send: Send
    ) -> None:
        """A valid signed URL: its cookie, then the same URL without the signature."""
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        exp = int(params.get(preview.EXP_PARAM, "0"))
        query = _clean_query(scope)
        location = (r.prefix or "") + _target(r, scope, with_query=False).decode("latin-1")
        if query:
            location += "?" + query.decode("latin-1")
        resp: Response = RedirectResponse(location, status_code=302)
        resp.set_cookie(
            preview.COOKIE, preview.cookie_value(target, r.port, exp, self.secret),
            max_age=max(1, exp - int(clock.time_s())), path=(r.prefix + "/") if r.prefix else "/",
            httponly=True, samesite="lax", secure=scope.get("scheme") in ("https", "wss"),
        )  # fmt: skip
        await resp(scope, receive, send)


def _ended_answer(why: str, grant: stream_revocation.Grant, port: int) -> tuple[int, str, str]:
    """(status, code, message) of a connection the re-check ended: what a new request would
    get for the same reason (docs/networking.md §3, the proxy's answers)."""
    if why == "expired":
        return 403, "signed_url_expired", "the signed URL that opened this connection has expired"
    if why == "paused":
        return 409, "sandbox_paused", "the sandbox was paused"
    if why in ("stopped", "error"):
        return 404, "not_found", "sandbox not found"
    if why != "revoked":  # another status than running: its host lost (missing), ...
        return 409, "invalid_state", f"sandbox is {why}"
    if grant.kind == "public":
        return 401, "access_revoked", f"port {port} is no longer public"
    return 401, "access_revoked", "the credential that opened this connection was revoked"


def _token_holds(target: preview.PreviewTarget, token: str) -> bool:
    """Whether ``token`` is the sandbox's traffic token (as ``preview.authorize`` checks it)."""
    given = token_hash(token[:_MAX_TOKEN])
    return bool(target.token_hash) and hmac.compare_digest(given, target.token_hash)


def _expiry(creds: preview.Credentials, signed: bool, grant: stream_revocation.Grant) -> float | None:
    """When the credential that admitted a connection expires: a signed URL's ``exp``, or the
    cookie's (it carries the same ``exp``: a connection opened with the cookie ends when a
    request with it would start being refused); None for the token and a public visit."""
    if signed:
        return float(creds.exp or 0)  # authorize checked it: digits, in the future
    if grant.kind == "preview" and creds.token is None and creds.cookie is not None:
        exp = creds.cookie.partition(".")[0]
        return float(exp) if exp.isdigit() else None  # authorize checked it too
    return None


def _drop_one(counts: dict[Any, int], key: Any) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _client_address(scope: Scope, trusted_proxies: str) -> str:
    """The client's address: the peer, or what a trusted proxy says in ``X-Forwarded-For``
    (``WARREN_TRUSTED_PROXIES``, as the sign-in limits read it)."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not trusted_proxies:
        return peer
    forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
    return rate_limits.client_address(peer, forwarded, trusted_proxies)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _credentials(scope: Scope) -> preview.Credentials:
    token = _header(scope, preview.TOKEN_HEADER.encode())
    cookie = None
    raw_cookie = _header(scope, b"cookie")
    if raw_cookie and preview.COOKIE in raw_cookie:
        with contextlib.suppress(CookieError):
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw_cookie)
            if preview.COOKIE in jar:
                cookie = jar[preview.COOKIE].value
    sig = exp = None
    qs: bytes = scope.get("query_string", b"")
    if qs and (pairs := _signed_query(qs)) is not None:
        params = dict(pairs)
        sig, exp = params[preview.SIG_PARAM], params.get(preview.EXP_PARAM)
    return preview.Credentials(token=token, cookie=cookie, sig=sig, exp=exp)


def _signed_query(qs: bytes) -> list[tuple[str, str]] | None:
    """The query's parameters when it carries a signed URL's signature, else None. The access
    check and the query the sandbox sees (``_clean_query``) both read this one answer: a
    signature the check accepted is never forwarded, however its name was spelled (percent-encoded
    ``warren%5Fsig`` decodes to the same parameter)."""
    if b"warren_sig=" not in qs and (b"%" not in qs or _SIG_KEY.search(qs) is None):
        return None
    pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
    return pairs if any(k == preview.SIG_PARAM for k, _ in pairs) else None


def _clean_query(scope: Scope) -> bytes:
    """The query without the signed URL's parameters (as the client sent it when it has none)."""
    qs: bytes = scope.get("query_string", b"")
    if not qs or (pairs := _signed_query(qs)) is None:
        return qs
    kept = [(k, v) for k, v in pairs if k not in (preview.SIG_PARAM, preview.EXP_PARAM)]
    return urlencode(kept).encode("latin-1")


def _target(r: Route, scope: Scope, *, with_query: bool = True) -> bytes:
    """The request target the sandbox's server sees: the raw path after the route's prefix."""
    raw: bytes | None = scope.get("raw_path")
    prefix = r.prefix.encode()
    if raw is not None and raw.startswith(prefix):
        path = raw[len(prefix) :] or b"/"
        if not path.startswith(b"/"):
            path = b"/" + path
    else:
        path = r.path.encode("utf-8", "surrogateescape")
    query = _clean_query(scope) if with_query else b""
    return path + b"?" + query if query else path


def _forward_headers(
    r: Route, scope: Scope, secret: str, *, websocket: bool = False
) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    drop = hop_by_hop(headers) | _STRIP
    if websocket:
        drop |= {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions"}
    out = []
    for k, v in headers:
        if k in drop:
            continue
        if k in _INSPECT:  # one set lookup for every other header: they cost nothing more
            if k == b"cookie":
                v = cookies.without_platform_cookies(v)
                if not v:
                    continue
            elif credentials.is_platform(k, v, secret):
                continue
        out.append((k, v))
    # A chunked request body is re-framed chunked (Transfer-Encoding is hop-by-hop).
    names = {k for k, _ in headers}
    if not websocket and b"transfer-encoding" in names and b"content-length" not in names:
        out.append((b"transfer-encoding", b"chunked"))
    client = scope.get("client")
    if client:
        out.append((b"x-forwarded-for", str(client[0]).encode()))
    out.append((b"x-forwarded-proto", b"https" if scope.get("scheme") in ("https", "wss") else b"http"))
    if host := _header(scope, b"host"):
        out.append((b"x-forwarded-host", host.encode("latin-1")))
    if r.prefix:
        out.append((b"x-forwarded-prefix", r.prefix.encode()))
    return out


def _set_cookies(headers: Any, prefix: str | None) -> list[tuple[bytes, bytes]]:
    """The response's headers, its cookies confined to the port's path (path-routed) or to its
    preview host (``prefix`` None)."""
    out = []
    for k, v in headers:
        if prefix is not None and k.lower() == b"clear-site-data":
            continue  # it would clear the control plane's cookies and storage: the dashboard's
        if k.lower() == b"set-cookie":
            v = cookies.host_only_set_cookie(v) if prefix is None else cookies.confined_set_cookie(v, prefix)
            if v is None:
                continue
        out.append((k, v))
    return out


class PreviewMiddleware:
    """In front of the CP's app: proxied requests go to the proxy (before any body cap or
    router), everything else to the app. The engine and the host pool are the app's own."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        deps: Callable[[Scope], tuple[AsyncEngine, HostClientPool]],
        budget: rate_limits.RefusalBudget,
    ):
        self.app = app
        self.proxy = Proxy(settings, budget=budget)
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            r = self.proxy.route_of(scope)
            if r is not None:
                t0 = time.perf_counter()
                engine, pool = self.deps(scope)
                await self.proxy(r, scope, receive, send, engine, pool)
                log.debug("event=proxied sandbox_id=%s port=%s ms=%.2f", r.sandbox_id, r.port,
                          (time.perf_counter() - t0) * 1000)  # fmt: skip
                return
        await self.app(scope, receive, send)
