"""Agent startup and shutdown.

``serve()`` is the whole process: host setup, re-adoption, the gRPC server and any extra tasks
(the control-plane link plugs in here, with its TLS credential). Shutdown has two flavours:

* SIGTERM/SIGINT (a restart, an upgrade): stop serving, **keep** every sandbox. The next agent
  re-adopts them from their records — DESIGN's re-adoption requirement wins over docs/spec.md §3.5,
  whose "destroy everything" made sense only for VMs that die with their agent anyway.
* ``Terminate`` RPC or :meth:`AgentHandle.terminate` (the host is being removed, or the CP
  said it no longer knows this host): destroy every sandbox, then stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc

from warren.agent import dial_data, egress, favor_watch, metrics, telemetry
from warren.agent.egress_usage import ENDED_FILE
from warren.agent.manager import SandboxManager
from warren.agent.network import NetworkSlots
from warren.agent.runtime import cmds_cgroup, cmds_oom, gvisor, socket_ceiling
from warren.agent.runtime.base import Runtime
from warren.agent.runtime.oci import OciRuntime
from warren.agent.runtime.select import RuntimeSet
from warren.agent.server import HostAgentServicer
from warren.agent.settings import AgentSettings
from warren.agent.templates import TemplateStore
from warren.aio import cancel_and_wait
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2_grpc as pb_grpc
from warren.rpc import keepalive

log = logging.getLogger("warren.agent")

GRACE_SECONDS = 30.0
MAX_MESSAGE = 64 * 1024 * 1024


class AgentHandle:
    """What extra tasks (the control-plane link) get: the manager and the shutdown switches."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._stop = asyncio.Event()
        self.destroy_on_stop = False

    def stop(self) -> None:
        """Stop serving; sandboxes keep running for the next agent to re-adopt."""
        self._stop.set()

    def terminate(self) -> None:
        """Destroy every sandbox, then stop (Terminate RPC, host removed from the CP)."""
        self.destroy_on_stop = True
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()


ExtraTask = Callable[[AgentHandle], Coroutine[Any, Any, None]]
LinkUp = Callable[[], Coroutine[Any, Any, grpc.ServerCredentials]]


def check_listen(listen: str, *, tls: bool) -> None:
    """Without mTLS the agent must not be reachable from other machines."""
    if listen.startswith("unix:") or tls:
        return
    host = listen.rsplit(":", 1)[0].strip("[]")
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise SystemExit(f"refusing to listen on {listen}: without mTLS only loopback or unix: addresses")


def _lock_data_dir(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "agent.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"another warren agent is using {data_dir}") from None
    return fd


def stream_window(settings: AgentSettings) -> int:
    """The HTTP/2 window the agent grants each incoming stream, fixed. gRPC's own grew with its
    estimate of the link's bandwidth-delay product, and a layer's sender faster than its
    converter had the agent hold up to 47 MiB of the layer ahead of it (PutLayer has no credit
    of its own; tests/security/test_attack_session8_layer_stream.py). As large as the largest
    file-transfer window (their credit would be capped by it), and never below gRPC's own
    4 MiB least."""
    return max(4 << 20, settings.transfer_window_max)


async def _grpc_server(
    manager: SandboxManager,
    handle: AgentHandle,
    listen: str,
    tls: grpc.ServerCredentials | None,
    window: int,
) -> grpc.aio.Server:
    """The agent's gRPC server on ``listen`` (mTLS with ``tls``), started; ``window``: see
    :func:`stream_window`."""
    server = grpc.aio.server(
        interceptors=[telemetry.RpcInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", window),
            # Accepts the control plane's keepalive pings, and pings it (warren/rpc/keepalive.py).
            *keepalive.SERVER_OPTIONS,
        ],
    )
    pb_grpc.add_HostAgentServicer_to_server(HostAgentServicer(manager, on_terminate=handle.terminate), server)
    if tls is not None:
        server.add_secure_port(listen, tls)
    else:
        server.add_insecure_port(listen)
    await server.start()
    return server


async def runtimes(default: str, data_dir: Path, settings: AgentSettings) -> RuntimeSet:
    """The runtimes this host offers: the default OCI one, the other if installed, and gVisor
    where ``runsc`` is (its platform chosen now, and logged)."""
    if settings.cgroup_favor_dynmods:
        state, why = await asyncio.to_thread(cmds_cgroup.favor_dynamic_moves, data_dir / "cgroup2-scratch")
        if why:
            log.info("event=cgroup_favordynmods state=%s reason=%r", state, why)
        else:
            log.info("event=cgroup_favordynmods state=%s", state)
    offered: dict[str, Runtime] = {default: OciRuntime(default, data_dir / default)}
    for other in ("runc", "crun"):
        if other not in offered and shutil.which(other):
            offered[other] = OciRuntime(other, data_dir / other)
    if settings.gvisor_platform != "off" and gvisor.available():
        platform = await gvisor.choose_platform(settings.gvisor_platform, data_dir / "gvisor-probe")
        offered[gvisor.NAME] = gvisor.GvisorRuntime(data_dir / "runsc", data_dir / "sandboxes", platform)
        log.info("event=gvisor_platform platform=%s setting=%s", platform, settings.gvisor_platform)
    return RuntimeSet(offered, default)


async def _manager(
    data_dir: Path,
    settings: AgentSettings,
    runtime: str,
    minimal_template_dir: Path | None,
    cp_url: str | None,
) -> SandboxManager:
    """The sandbox manager with its template store, network slots and runtimes (not started)."""
    templates = TemplateStore(
        data_dir / "templates",
        minimal_dir=minimal_template_dir or settings.minimal_dir,
        mirror=settings.debian_mirror,
    )
    deny = await egress.platform_deny(cp_url, settings.egress_deny)
    network = NetworkSlots(
        str(data_dir), pool_size=settings.net_pool, platform_deny=deny, dns_upstream=settings.dns_upstream,
        ended_egress=data_dir / ENDED_FILE,
    )  # fmt: skip
    try:
        return SandboxManager(
            data_dir,
            await runtimes(runtime, data_dir, settings),
            settings=settings,
            templates=templates,
            network=network,
        )
    except InvalidRequest as e:  # a --warm-pool of a runtime this host lacks
        raise SystemExit(f"invalid --warm-pool / WARREN_AGENT_WARM_POOL: {e}") from None


async def serve(
    listen: str,
    data_dir: Path,
    settings: AgentSettings,
    *,
    runtime: str = "runc",
    tls: grpc.ServerCredentials | None = None,
    extra_tasks: Sequence[ExtraTask] = (),
    minimal_template_dir: Path | None = None,
    cp_url: str | None = None,
    link_up: LinkUp | None = None,
) -> None:
    """``cp_url``: the control plane's URL; its addresses are closed to sandboxes.

    ``link_up`` (the control-plane link) runs once the host is set up and just before the gRPC
    server starts, and gives its TLS credential: registration puts the host online, so it comes
    as late as it can, when nothing slow stands between it and serving."""
    check_listen(listen, tls=tls is not None or link_up is not None)
    data_dir = data_dir.resolve()  # noqa: ASYNC240
    lock_fd = _lock_data_dir(data_dir)
    manager = await _manager(data_dir, settings, runtime, minimal_template_dir, cp_url)
    handle = AgentHandle(manager)
    await manager.start()
    if link_up is not None:
        try:
            tls = await link_up()
        except BaseException:
            await manager.stop()
            os.close(lock_fd)
            raise

    server = await _grpc_server(manager, handle, listen, tls, stream_window(settings))
    metrics_server = await telemetry.serve_metrics(settings.metrics_listen, manager)
    data_port = await dial_data.start(
        manager, listen, settings.dial_data_port, ticket_ttl_s=settings.dial_ticket_ttl_s,
        data_dir=data_dir if tls is not None else None, tls_on_loopback=settings.dial_data_tls_on_loopback,
    )  # fmt: skip

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle.stop)
    tasks = [asyncio.create_task(t(handle), name=f"extra-{i}") for i, t in enumerate(extra_tasks)]
    if settings.cgroup_favor_dynmods:  # set at start (runtimes()); kept set (favor_watch.py)
        scratch, every = data_dir / "cgroup2-scratch", settings.heartbeat_interval_s
        tasks.append(asyncio.create_task(favor_watch.watch(scratch, every), name="favordynmods"))
    watchdog = socket_ceiling.watch(manager.running, metrics.SOCKET_MEMORY_KILLS.inc)  # runc/crun
    tasks.append(asyncio.create_task(watchdog, name="socket-ceiling"))
    cmds_oom.WATCH.start(metrics.OOM_STORM_KILLS.inc)  # runc/crun: OOM storms (cmds_oom.py)
    limit = manager.create_concurrency or "unlimited"
    log.info(
        "event=agent_ready listen=%s data_dir=%s runtime=%s sandboxes=%d create_concurrency=%s",
        listen, data_dir, runtime, len(manager.list_sandboxes()[0]), limit,
    )  # fmt: skip
    try:
        await handle.wait()
    finally:
        log.info("event=agent_stopping destroy_sandboxes=%s", handle.destroy_on_stop)
        await cancel_and_wait(*tasks)
        cmds_oom.WATCH.stop()  # sandboxes left running get the kernel's OOM killer back
        if handle.destroy_on_stop:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GRACE_SECONDS):
                    await manager.destroy_all()
        if data_port is not None:
            await data_port.close()
        if metrics_server is not None:
            metrics_server.close()
        await server.stop(grace=2.0)
        await manager.stop()
        os.close(lock_fd)
        log.info("event=agent_stopped")
