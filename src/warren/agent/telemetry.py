"""The agent's Prometheus metrics and the request id it logs (docs/agent.md, "Metrics").

- :class:`RpcInterceptor` wraps every RPC handler: it takes the CP's ``x-request-id`` metadata
  into ``warren.request_context.request_id`` (so the handler's log lines carry it) and times the
  call into ``warren_agent_rpc_duration_seconds`` / ``warren_agent_served_rpc_errors_total``.
- :class:`ManagerCollector` reads the manager's state at scrape time: sandboxes by status,
  creates under way, installed layers.
- :func:`serve_metrics` answers ``GET /metrics`` on ``--metrics-listen`` (default
  127.0.0.1:9464; 0 turns it off) from the agent's own event loop, so a scrape reads the
  manager's state without another thread. The endpoint has no authentication: keep it on
  loopback or a management network.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from warren.agent import metrics
from warren.request_context import GRPC_METADATA_KEY, accept_request_id, request_id

if TYPE_CHECKING:
    from warren.agent.manager import SandboxManager

log = logging.getLogger("warren.agent.telemetry")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
RPC_SECONDS = Histogram(
    "warren_agent_rpc_duration_seconds",
    "RPCs served by this agent, by method (streams: until the stream ends).",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
# Not `warren_agent_rpc_errors`: that is the CP's count of the calls it saw fail (cp/telemetry.py).
RPC_ERRORS = Counter(
    "warren_agent_served_rpc_errors",
    "RPCs this agent answered with an error, by method and gRPC status code.",
    ["method", "code"],
    registry=REGISTRY,
)
# A scrape's request: one line and a few headers; anything longer is not a scraper.
_MAX_REQUEST = 8192
_READ_TIMEOUT_S = 5.0


def _method_name(full: str) -> str:
    return full.rsplit("/", 1)[-1] or "other"


def _code_of(context: Any, exc: BaseException) -> str:
    code = None
    with contextlib.suppress(Exception):
        code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _wrap(fn: Callable[..., Any], method: str, rid_of: Callable[[Any], str]) -> Callable[..., Any]:
    """``fn`` (a handler: coroutine function or async generator function) with the request id
    set and its time and failures counted."""
    if inspect.isasyncgenfunction(fn):

        async def stream(request: Any, context: Any) -> Any:
            token = request_id.set(rid_of(context))
            started = time.perf_counter()
            try:
                async for item in fn(request, context):
                    yield item
            except BaseException as e:
                RPC_ERRORS.labels(method, _code_of(context, e)).inc()
                raise
            finally:
                RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
                # A stream the client left is closed by the loop's async-generator finalizer, in
                # another context: there the token means nothing (and the value dies with ours).
                with contextlib.suppress(ValueError):
                    request_id.reset(token)

        return stream

    async def unary(request: Any, context: Any) -> Any:
        token = request_id.set(rid_of(context))
        started = time.perf_counter()
        try:
            return await fn(request, context)
        except BaseException as e:
            RPC_ERRORS.labels(method, _code_of(context, e)).inc()
            raise
        finally:
            RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
            request_id.reset(token)

    return unary


def _request_id_of(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == GRPC_METADATA_KEY:
            return accept_request_id(value)
    return accept_request_id(None)


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Request id and timing for every RPC (see the module docstring)."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)
        for kind, factory in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            fn = getattr(handler, kind)
            if fn is not None:
                return factory(
                    _wrap(fn, method, _request_id_of),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


class ManagerCollector(Collector):
    """The manager's state, read when scraped (on the agent's event loop)."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        layers = self.manager.layers.installed()
        counts = self.manager.status_counts()
        warm = self.manager.warm_pools
        yield from manager_families(
            counts, len(self.manager.creating()), len(layers), sum(x.size for x in layers)
        )
        pools = [(p.template, p.target, p.ready) for p in warm.statuses()]
        yield from metrics.warm_pool_families(pools, warm.claims, warm.cold)

    def describe(self) -> Iterator[Metric]:
        yield from manager_families({}, 0, 0, 0)
        yield from metrics.warm_pool_families([], 0, {})


def manager_families(
    counts: dict[str, int], creating: int, layers: int, layer_bytes: int
) -> Iterator[Metric]:
    """The manager's families from its figures (no figures: just the families, for describe)."""
    sandboxes = GaugeMetricFamily(
        "warren_agent_sandboxes", "Sandboxes this agent holds, by status.", labels=["state"]
    )
    for state, n in sorted(counts.items()):
        sandboxes.add_metric([state], n)
    yield sandboxes
    yield GaugeMetricFamily(
        "warren_agent_creates_in_progress",
        "Creates received and not finished (queued or under way).",
        value=creating,
    )
    yield GaugeMetricFamily("warren_agent_layers", "Store layers installed on this host.", value=layers)
    yield GaugeMetricFamily(
        "warren_agent_layer_bytes",
        "Bytes of the store layers installed on this host (their recorded tar sizes).",
        value=layer_bytes,
    )


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``host:port`` → (host, port); ``0`` or empty → None (off). A bad value is a ValueError."""
    if listen.strip() in ("", "0"):
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics listen address must be host:port or 0, not {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registry: CollectorRegistry
) -> None:
    try:
        async with asyncio.timeout(_READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
            body, status, ctype = generate_latest(registry), b"200 OK", CONTENT_TYPE_LATEST.encode()
        else:
            body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )  # fmt: skip
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_metrics(listen: str, manager: SandboxManager) -> asyncio.Server | None:
    """Start the metrics endpoint (None when ``listen`` is 0). A port already taken is logged
    and the agent serves on without metrics: sandboxes matter more than their figures."""
    where = parse_listen(listen)
    if where is None:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Shared())
    registry.register(ManagerCollector(manager))
    try:
        server = await asyncio.start_server(
            lambda r, w: _answer(r, w, registry), where[0], where[1], limit=_MAX_REQUEST
        )
    except OSError as e:
        log.error("event=metrics_listen_failed listen=%s error=%s", listen, e)
        return None
    log.info("event=metrics_listening listen=%s", listen)
    return server


class _Shared(Collector):
    """The process-wide families (RPC timings, errors, the process itself)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
