"""E2B's sandbox create and metrics window, over the sandbox services (docs/e2b.md §2).

Create maps E2B's request onto :class:`~warren.cp.services.sandboxes.CreateParams`: the
template reference, env, metadata (bounded, ``services/sandbox_list.py``), internet access,
egress rules (``network.allowOut`` / ``denyOut``, E2B's semantics, ``warren.egress_rules``),
an absolute lifetime instead of the inactivity timeout, ``autoPause`` → ``on_end = 'pause'``,
``network.allowPublicTraffic`` (default true) → every port public, and ``autoResume`` →
proxied traffic resumes the sandbox when paused (``services/preview.py``).

Metrics: E2B asks for a window in unix seconds (default: since the sandbox started, until now);
the smallest of Warren's metric ranges that covers it is read and trimmed to the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.config import Settings
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.services import egress_rules, metrics, preview, sandbox_power, sandboxes
from warren.cp.services.context import AuthContext
from warren.cp.services.lifetimes import check_lifetime
from warren.cp.services.sandbox_list import check_metadata
from warren.cp.services.sandboxes import CreateParams, SandboxView, find
from warren.cp.store import LayerStore
from warren.errors import Conflict, InvalidRequest, InvalidState, NotFound

# The platform template E2B's default `base` names (docs/templates.md §6).
BASE_TEMPLATE = "base"
MAX_UNIX_S = 1 << 40  # far past any real timestamp; bounds what a query may say


@dataclass(frozen=True)
class E2BCreate:
    """E2B's create request, its types checked by the listener."""

    template: str
    timeout_s: object
    auto_pause: bool = False
    auto_resume: bool = False
    internet: bool = True
    metadata: object = None
    env: dict[str, str] = field(default_factory=dict)
    allow_out: list[str] | None = None
    deny_out: list[str] | None = None
    public_traffic: bool = True


async def create(
    engine: AsyncEngine,
    pool: HostClientPool,
    scheduler: Scheduler,
    ctx: AuthContext,
    req: E2BCreate,
    *,
    settings: Settings,
    store: LayerStore,
) -> SandboxView:
    """Create the sandbox (see module doc); the view carries its traffic token."""
    lifetime = check_lifetime(settings, req.timeout_s)
    network = None
    if req.allow_out is not None or req.deny_out is not None:
        network = egress_rules.NetworkRules(allow_out=req.allow_out or [], deny_out=req.deny_out or [])
    params = CreateParams(
        template=req.template,
        internet=req.internet,
        env=req.env,
        network=egress_rules.checked(network, internet=req.internet),
        metadata=check_metadata(req.metadata),
        lifetime_s=lifetime,
        on_end="pause" if req.auto_pause else "kill",
        all_ports_public=req.public_traffic,
    )
    created = await sandboxes.create(engine, pool, scheduler, ctx, params, settings=settings, store=store)
    view = created.view()
    if req.auto_resume:
        await preview.update(engine, ctx, view.id, settings, public_ports=None, auto_resume=True)
    return view


def _unix(raw: str | None, what: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) > MAX_UNIX_S:
        raise InvalidRequest(f"{what} must be a unix time in seconds")
    return int(raw)


@dataclass(frozen=True)
class Window:
    sandbox: SandboxView
    points: list[metrics.MetricPoint]


async def metrics_window(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    start_raw: str | None,
    end_raw: str | None,
) -> Window:
    """The sandbox's samples between ``start`` and ``end`` (unix seconds, both optional)."""
    start, end = _unix(start_raw, "start"), _unix(end_raw, "end")
    found = await find(engine, ctx, sandbox_id)
    if found.sandbox.status not in ("running", "paused"):
        raise NotFound("sandbox not found")
    now = int(clock.time_s())
    started = found.sandbox.started_at or found.sandbox.created_at
    start = int(started.timestamp()) if start is None else start
    end = now if end is None else end
    if start > end:
        raise InvalidRequest("start must not be after end")
    span = max(now - start, 0)
    range_ = next((r for r, (_, secs) in metrics.RANGES.items() if secs >= span), "24h")
    try:
        got = await metrics.get_metrics(engine, pool, ctx, sandbox_id, range_)
    except InvalidState as e:
        raise NotFound("sandbox not found") from e
    points = [p for p in got.points if start <= p.timestamp_unix <= end]
    return Window(found.sandbox, points)


async def kill(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str) -> None:
    """Destroy it; one already stopped (or that failed to start) is a 404, so E2B's ``kill``
    answers True once and False after."""
    found = await find(engine, ctx, sandbox_id)
    if found.sandbox.status in ("stopped", "error"):
        raise NotFound("sandbox not found")
    await sandboxes.destroy_sandbox(engine, pool, ctx, sandbox_id)


async def pause(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str) -> None:
    """Pause a running sandbox: 409 when it is already paused (E2B's ``pause`` then answers
    False), 404 when it is not live."""
    found = await find(engine, ctx, sandbox_id)
    if found.sandbox.status == "paused":
        raise Conflict(f"sandbox {sandbox_id} is already paused", code="already_paused")
    if found.sandbox.status != "running":
        raise NotFound("sandbox not found")
    await sandbox_power.pause_sandbox(engine, pool, ctx, sandbox_id)
