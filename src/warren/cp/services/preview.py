"""Preview URLs for sandbox ports (docs/networking.md §3): traffic tokens, public ports, signed
URLs, who may reach a port through the proxy, and auto-resume.

- Every sandbox has a **traffic token** (``wtt_…``), shown once at create and by a rotation;
  only its sha256 is stored (``sandboxes.traffic_token_hash``).
- A port is private unless listed in ``public_ports``, or every port is public
  (``all_ports_public``: a sandbox created through E2B's API with its default
  ``allowPublicTraffic: true``, docs/e2b.md §1.2): a private port needs the token (header
  ``X-Warren-Traffic-Token``), or a **signed URL** (``warren_sig`` + ``exp``: an HMAC over the
  sandbox, the port and the expiry), which the proxy trades for a cookie carrying the same
  signature. The signing key is derived from the CP's secret *and the token's hash*: rotating
  the token also voids every signed URL and cookie made before.
- A connection the token, a signed URL or its cookie admitted rests on the token's hash
  (:func:`grant_of`): the proxy ends it when that changes (a rotation, ``revoke_team_tokens``),
  within ``stream_revocation.RECHECK_S`` on every replica (session 17). A connection to a
  public port without one rests on the port staying public and the sandbox running: it ends
  when the port is made private (:func:`update`), or the sandbox paused or gone.
- The proxy reads a sandbox by id alone (no team: the token is the credential) and keeps what
  it read for ``proxy_cache_s``; writes through this module drop this process's copy at once,
  other replicas see them within that time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import driver, transaction
from warren.cp.db.queries import preview as q
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import audit, sandbox_power, stream_revocation
from warren.cp.services import sandboxes as sandbox_svc
from warren.cp.services.context import AuthContext
from warren.cp.services.traffic_tokens import new_traffic_token, token_hash
from warren.errors import (
    Forbidden,
    InvalidRequest,
    InvalidState,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)

TOKEN_HEADER = "x-warren-traffic-token"  # noqa: S105 - a header name
COOKIE = "warren_preview"
SIG_PARAM, EXP_PARAM = "warren_sig", "exp"
MAX_PUBLIC_PORTS = 16
MAX_PATH = 2048
_MAX_TOKEN = 128
_CACHE_MAX = 10000


# ------------------------------------------------------------------------- tokens, signatures


def _key(secret: str, token_hash_hex: str) -> bytes:
    return hmac.new(secret.encode(), b"warren-preview-url-v1:" + token_hash_hex.encode(), "sha256").digest()


def signature(secret: str, token_hash_hex: str, sandbox_id: str, port: int, exp: int) -> str:
    mac = hmac.new(_key(secret, token_hash_hex), f"{sandbox_id}:{port}:{exp}".encode(), "sha256")
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


# --------------------------------------------------------------------------- what the proxy reads


@dataclass(frozen=True, slots=True)
class PreviewTarget:
    """A sandbox as the proxy needs it."""

    sb_uuid: uuid.UUID
    sandbox_id: str
    team_id: uuid.UUID
    status: str
    token_hash: str
    public_ports: frozenset[int]
    auto_resume: bool
    timeout_sec: int
    host_id: uuid.UUID | None
    host_address: str
    all_ports_public: bool = False  # E2B's allowPublicTraffic (docs/e2b.md §1.2)
    owner_id: uuid.UUID | None = None  # the team's owner: the proxy's per-owner bound (cp/proxy/bounds.py)
    # What a connection rests on (grant_of): made once per read (a public port's: once per
    # port), not per request.
    grant: stream_revocation.Grant = field(init=False, repr=False, compare=False)
    public_grants: dict[int, stream_revocation.Grant] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grant", stream_revocation.Grant("preview", self.sb_uuid, h=self.token_hash))
        object.__setattr__(self, "public_grants", {})

    def client(self, pool: HostClientPool) -> HostClient:
        if self.host_id is None or not self.host_address:
            raise ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
        return pool.get_for(self.host_id, self.host_address)


def _target(row: Mapping[str, Any]) -> PreviewTarget:
    return PreviewTarget(
        sb_uuid=row["id"], sandbox_id=ids.sandbox_id(row["id"]), team_id=row["team_id"],
        status=row["status"], token_hash=row["traffic_token_hash"] or "",
        public_ports=frozenset(row["public_ports"] or ()), auto_resume=bool(row["auto_resume"]),
        timeout_sec=row["timeout_sec"], host_id=row["h_id"], host_address=str(row["h_address"] or ""),
        all_ports_public=bool(row["all_ports_public"]), owner_id=row["owner_id"],
    )  # fmt: skip


class PreviewCache:
    """What the proxy read about each sandbox, for ``ttl_s`` (0: read every request)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, PreviewTarget]] = {}

    def get(self, sandbox_id: str) -> PreviewTarget | None:
        item = self._items.get(sandbox_id)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, target: PreviewTarget) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._items) >= _CACHE_MAX:
            self._items.clear()  # bounded; a re-read costs one statement
        self._items[target.sandbox_id] = (time.monotonic() + self.ttl_s, target)

    def drop(self, sandbox_id: str) -> None:
        self._items.pop(sandbox_id, None)


# One per process: the API's writes drop entries the proxy (mounted in the same process) keeps.
_caches: list[PreviewCache] = []


def make_cache(ttl_s: float) -> PreviewCache:
    cache = PreviewCache(ttl_s)
    _caches.append(cache)
    return cache


def forget(sandbox_id: str) -> None:
    """Drop the sandbox from this process's caches (a write changed what they hold)."""
    for cache in _caches:
        cache.drop(sandbox_id)


async def lookup(
    engine: AsyncEngine, cache: PreviewCache, sandbox_id: str, *, fresh: bool = False
) -> PreviewTarget:
    """The sandbox named in a proxied request (404 for a malformed or unknown id, and for one
    that is gone: stopped or failed)."""
    target = None if fresh else cache.get(sandbox_id)
    if target is None:
        try:
            sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
        except InvalidRequest:
            raise NotFound("sandbox not found") from None
        async with driver(engine) as conn:
            row = await conn.fetchrow(q.PREVIEW_LOOKUP, sb_uuid)
        if row is None:
            raise NotFound("sandbox not found")
        target = _target(row)
        cache.put(target)
    if target.status in ("stopped", "error"):
        raise NotFound("sandbox not found")
    return target


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a proxied request carried: the token header, our cookie, a signed URL's params."""

    token: str | None = None
    cookie: str | None = None
    sig: str | None = None
    exp: str | None = None


def authorize(target: PreviewTarget, port: int, creds: Credentials, *, secret: str) -> bool:
    """Whether the request may reach ``port``; True when it came with a valid signed URL (the
    proxy then sets the cookie and redirects to the clean URL). 401 ``traffic_token_required``
    without credentials, 403 with a wrong token or a bad/expired signature."""
    if creds.sig is not None or creds.exp is not None:
        _check_signed(target, port, creds.sig or "", creds.exp or "", secret)
        return True
    if target.all_ports_public or port in target.public_ports:
        return False
    if creds.token is not None:
        given = token_hash(creds.token[:_MAX_TOKEN])
        if target.token_hash and hmac.compare_digest(given, target.token_hash):
            return False
        raise Forbidden("the traffic token is not this sandbox's", code="traffic_token_invalid")
    if creds.cookie is not None:
        exp, _, sig = creds.cookie.partition(".")
        try:
            _check_signed(target, port, sig, exp, secret)
            return False
        except Forbidden:
            pass  # a stale cookie counts as none
    raise Unauthorized(
        f"port {port} is private: send {TOKEN_HEADER} or open a signed URL", code="traffic_token_required"
    )


def grant_of(target: PreviewTarget, port: int, signed: bool) -> stream_revocation.Grant:
    """What a connection :func:`authorize` admitted rests on: the traffic token's hash (the
    token, a signed URL and its cookie all derive from it), or for a public port reached
    without a signature (kind ``public``, no credential: anyone's) the port staying public."""
    if not signed and (target.all_ports_public or port in target.public_ports):
        grant = target.public_grants.get(port)
        if grant is None:
            grant = stream_revocation.Grant("public", target.sb_uuid, epoch=port)
            if len(target.public_grants) < MAX_PUBLIC_PORTS:  # all_ports_public: any of 65 535
                target.public_grants[port] = grant
        return grant
    return target.grant


def _check_signed(target: PreviewTarget, port: int, sig: str, exp_s: str, secret: str) -> None:
    if not exp_s.isdigit() or len(exp_s) > 12 or not sig or len(sig) > 64 or not target.token_hash:
        raise Forbidden("malformed signed URL", code="signed_url_invalid")
    want = signature(secret, target.token_hash, target.sandbox_id, port, int(exp_s))
    if not hmac.compare_digest(want.encode(), sig.encode("utf-8", "replace")):
        raise Forbidden("the signature does not match this sandbox and port", code="signed_url_invalid")
    if int(exp_s) <= int(clock.time_s()):
        raise Forbidden("the signed URL has expired", code="signed_url_expired")


def cookie_value(target: PreviewTarget, port: int, exp: int, secret: str) -> str:
    return f"{exp}.{signature(secret, target.token_hash, target.sandbox_id, port, exp)}"


# ------------------------------------------------------------------------------ auto-resume

_resuming: dict[str, asyncio.Lock] = {}


async def ensure_running(
    engine: AsyncEngine, pool: HostClientPool, cache: PreviewCache, target: PreviewTarget
) -> PreviewTarget:
    """The sandbox running: as it is, or resumed when paused with ``auto_resume`` (one resume
    per sandbox at a time in this process); 409 ``sandbox_paused`` otherwise."""
    if target.status == "running":
        return target
    if target.status != "paused":
        raise InvalidState(f"sandbox is {target.status}")
    if not target.auto_resume:
        raise InvalidState("the sandbox is paused (set auto_resume to wake it)", code="sandbox_paused")
    lock = _resuming.setdefault(target.sandbox_id, asyncio.Lock())
    try:
        async with lock:
            target = await lookup(engine, cache, target.sandbox_id, fresh=True)
            if target.status == "paused":
                ctx = AuthContext(kind="session", team_id=target.team_id)  # audited as the system
                with contextlib.suppress(InvalidState):  # resumed meanwhile by someone else
                    await sandbox_power.resume_sandbox(engine, pool, ctx, target.sandbox_id)
                target = await lookup(engine, cache, target.sandbox_id, fresh=True)
    finally:
        if not lock.locked():
            _resuming.pop(target.sandbox_id, None)
    if target.status != "running":
        raise InvalidState(f"sandbox is {target.status}")
    return target


# ----------------------------------------------------------------------- the API's settings


class PreviewView(BaseModel):
    """A sandbox's preview settings."""

    sandbox_id: str
    public_ports: list[int]
    auto_resume: bool
    preview_domain: str | None = None


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise InvalidRequest("port must be 1..65535")
    return port


def _view(row: Mapping[str, Any] | sa.RowMapping, settings: Settings) -> PreviewView:
    return PreviewView(
        sandbox_id=ids.sandbox_id(row["id"]), public_ports=sorted(row["public_ports"] or ()),
        auto_resume=bool(row["auto_resume"]), preview_domain=settings.preview_domain or None,
    )  # fmt: skip


async def get_settings(
    engine: AsyncEngine, ctx: AuthContext, sandbox_id: str, settings: Settings
) -> PreviewView:
    return _view((await sandbox_svc.find(engine, ctx, sandbox_id)).row, settings)


async def update(
    engine: AsyncEngine,
    ctx: AuthContext,
    sandbox_id: str,
    settings: Settings,
    *,
    public_ports: list[int] | None,
    auto_resume: bool | None,
) -> PreviewView:
    """Set which ports are public and whether proxied traffic resumes the sandbox."""
    found = await sandbox_svc.find(engine, ctx, sandbox_id)
    values: dict[str, Any] = {}
    if public_ports is not None:
        ports = sorted({check_port(p) for p in public_ports})
        if len(ports) > MAX_PUBLIC_PORTS:
            raise InvalidRequest(f"public_ports: at most {MAX_PUBLIC_PORTS} ports")
        values["public_ports"] = ports
    if auto_resume is not None:
        values["auto_resume"] = auto_resume
    if not values:
        return _view(found.row, settings)
    async with transaction(engine) as conn:
        stmt = sa.update(sandboxes).where(sandboxes.c.id == found.sb_uuid).values(**values)
        row = (await conn.execute(stmt.returning(*sandboxes.c))).mappings().one()
        await audit.record(
            conn, ctx, team_id=found.row["team_id"], action="update_preview", resource_type="sandbox",
            resource_id=found.sandbox.id, metadata={k: v for k, v in values.items()},
        )  # fmt: skip
    forget(found.sandbox.id)
    if public_ports is not None:  # committed: visitors of a port no longer public end now
        stream_revocation.kick()
    return _view(row, settings)


async def rotate_token(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> str:
    """A new traffic token; the old one, and every signed URL made with it, stop working."""
    found = await sandbox_svc.find(engine, ctx, sandbox_id)
    token, digest = new_traffic_token()
    async with transaction(engine) as conn:
        await conn.execute(
            sa.update(sandboxes).where(sandboxes.c.id == found.sb_uuid).values(traffic_token_hash=digest)
        )
        await audit.record(
            conn, ctx, team_id=found.row["team_id"], action="rotate_traffic_token",
            resource_type="sandbox", resource_id=found.sandbox.id,
        )  # fmt: skip
    forget(found.sandbox.id)
    stream_revocation.kick()  # connections the old token admitted end (committed now)
    return token


def check_path(path: str) -> str:
    if not path.startswith("/") or len(path) > MAX_PATH or any(ord(c) < 0x21 or c == "\x7f" for c in path):
        raise InvalidRequest(f"path must start with / and be at most {MAX_PATH} printable characters")
    return path


async def signed_url(
    engine: AsyncEngine,
    ctx: AuthContext,
    settings: Settings,
    sandbox_id: str,
    port: int,
    *,
    expires: int,
    path: str,
) -> tuple[str, int]:
    """A path URL of the port, signed until now + ``expires`` seconds; (url, expiry unix time)."""
    check_port(port)
    check_path(path)
    if not 1 <= expires <= settings.preview_url_max_expires_s:
        raise InvalidRequest(f"expires must be 1..{settings.preview_url_max_expires_s} seconds")
    found = await sandbox_svc.find(engine, ctx, sandbox_id)
    digest = found.row["traffic_token_hash"]
    if not digest:
        raise InvalidState("the sandbox has no traffic token; rotate it first", code="no_traffic_token")
    exp = int(clock.time_s()) + expires
    sid = found.sandbox.id
    sig = signature(settings.require_jwt_secret(), digest, sid, port, exp)
    base = settings.public_url.rstrip("/")
    sep = "&" if "?" in path else "?"
    quoted = quote(path, safe="/?&=%:@!$,;+~*._-")
    url = f"{base}/v1/sandboxes/{sid}/ports/{port}{quoted}{sep}{SIG_PARAM}={sig}&{EXP_PARAM}={exp}"
    return url, exp
