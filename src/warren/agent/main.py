"""Agent startup and shutdown.

``serve()`` is the whole process: host setup, re-adoption, the gRPC server and any extra tasks
(the control-plane link plugs in here, with its TLS credential). Shutdown has two flavours:

* SIGTERM/SIGINT (a restart, an upgrade): stop serving, **keep** every sandbox. The next agent
  re-adopts them from their records — DESIGN's re-adoption requirement wins over SPEC §3.5,
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
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc

from warren.agent.manager import SandboxManager
from warren.agent.runtime.oci import OciRuntime
from warren.agent.server import HostAgentServicer
from warren.agent.templates import TemplateStore
from warren.rpc import hostagent_pb2_grpc as pb_grpc

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


async def serve(
    listen: str,
    data_dir: Path,
    *,
    runtime: str = "runc",
    tls: grpc.ServerCredentials | None = None,
    extra_tasks: Sequence[ExtraTask] = (),
    minimal_template_dir: Path | None = None,
) -> None:
    check_listen(listen, tls=tls is not None)
    data_dir = data_dir.resolve()  # noqa: ASYNC240
    lock_fd = _lock_data_dir(data_dir)
    env_tpl = os.environ.get("WARREN_MINIMAL_DIR")
    templates = TemplateStore(
        data_dir / "templates", minimal_dir=minimal_template_dir or (Path(env_tpl) if env_tpl else None)
    )
    manager = SandboxManager(data_dir, OciRuntime(runtime, data_dir / runtime), templates=templates)
    handle = AgentHandle(manager)
    await manager.start()

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_HostAgentServicer_to_server(HostAgentServicer(manager, on_terminate=handle.terminate), server)
    if tls is not None:
        server.add_secure_port(listen, tls)
    else:
        server.add_insecure_port(listen)
    await server.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle.stop)
    tasks = [asyncio.create_task(t(handle), name=f"extra-{i}") for i, t in enumerate(extra_tasks)]
    limit = manager.create_concurrency or "unlimited"
    log.info(
        "event=agent_ready listen=%s data_dir=%s runtime=%s sandboxes=%d create_concurrency=%s",
        listen, data_dir, runtime, len(manager.list_sandboxes()[0]), limit,
    )  # fmt: skip
    try:
        await handle.wait()
    finally:
        log.info("event=agent_stopping destroy_sandboxes=%s", handle.destroy_on_stop)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if handle.destroy_on_stop:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GRACE_SECONDS):
                    await manager.destroy_all()
        await server.stop(grace=2.0)
        await manager.stop()
        os.close(lock_fd)
        log.info("event=agent_stopped")
