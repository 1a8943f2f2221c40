"""The control plane's runtime state: one typed object behind ``app.state``.

``create_app`` (``cp/app.py``) makes it with the settings, the per-team rate limiter and the
refusal budget; its lifespan, the one composition root, adds the database engine and the gate
every credential goes through, the CA, the
host client pool, the scheduler, the host monitor, the template store and its garbage
collector. The API
dependencies (``cp/api/deps.py``), the exec WebSocket and the dashboard all read it through
:func:`state_of`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import State
from starlette.requests import HTTPConnection

from warren.config import Settings
from warren.cp.body_cap import BodyBudget
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services import rate_limits, stream_slots
from warren.cp.services.authn import Gate
from warren.cp.services.layer_gc import LayerGC
from warren.cp.services.replica_lease import ReplicaLease
from warren.cp.services.retention import RetentionWorker
from warren.cp.services.template_builds import BuildRunner
from warren.cp.store import LayerStore


class AppState(State):
    """Starlette's ``app.state``, typed. The lifespan-built parts exist only while the app runs."""

    settings: Settings
    team_limiter: rate_limits.TeamRateLimiter
    refusal_budget: rate_limits.RefusalBudget  # 401s and 429s per client address
    engine: AsyncEngine
    gate: Gate  # authentication, then the team's request rate (services/authn.py)
    ca: CertificateAuthority
    pool: HostClientPool
    scheduler: Scheduler
    monitor: HostMonitor
    store: LayerStore  # the template store (docs/templates.md §3)
    layer_gc: LayerGC
    builds: BuildRunner  # the template builds this replica runs
    replica: ReplicaLease  # this replica's id and liveness lease
    retention: RetentionWorker  # deletes ended sandbox rows and old audit records

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.team_limiter = rate_limits.TeamRateLimiter(
            settings.team_rate_limit_per_s, settings.team_rate_burst
        )
        self.refusal_budget = rate_limits.RefusalBudget.from_settings(settings)
        # The request bodies this process is reading, on every listener (cp/body_cap.py).
        self.body_budget = BodyBudget.from_settings(settings)
        # Streams are counted per process, so is their per-owner bound (services/stream_slots.py).
        stream_slots.set_owner_limit(settings.max_streams_per_owner)


def state_of(conn: HTTPConnection) -> AppState:
    """The app's state, for a request or a WebSocket."""
    app: Any = conn.app
    state: AppState = app.state
    return state


def client_ip(conn: HTTPConnection) -> str:
    """The client's address: the socket peer, or what a trusted proxy (WARREN_TRUSTED_PROXIES)
    says in X-Forwarded-For. Never the header of an untrusted peer."""
    client: Any = conn.client
    peer: str = client.host if client else ""
    settings = state_of(conn).settings
    if not settings.trusted_proxies:
        return peer
    return rate_limits.client_address(peer, conn.headers.getlist("x-forwarded-for"), settings.trusted_proxies)


def sign_in_attempt(conn: HTTPConnection) -> rate_limits.Attempt:
    """Who is signing in, for the sign-in rate limits of login, signup and OAuth callbacks."""
    settings = state_of(conn).settings
    return rate_limits.Attempt(client_ip(conn), rate_limits.AuthLimits.from_settings(settings))
