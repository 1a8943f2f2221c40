"""The local host agent of ``warren up``: one machine is a complete platform out of the box.

On first start the control plane's database gets a regular host (created by the platform itself,
see :func:`warren.cp.services.hosts.create_local_host`) and the agent registers with its one-time
token; its credentials land in ``<home>/agent/host-credentials.json``. Later starts reuse them.
If an admin deletes the local host, the agent removes its credentials and exits; ``warren up``
then carries on without it (and the next ``warren up`` registers a fresh one).

An agent that crashes is started again by the supervisor (``RestartPolicy``): with its saved
credentials, so no new registration, and it re-adopts the sandboxes that outlived it. The
one-time registration token travels in the agent's environment (``WARREN_REGISTRATION_TOKEN``,
readable by root only), never on its command line, which every local user can read in ``ps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from warren.agent.control_plane import credentials_path
from warren.agent.startup_checks import EXIT_LISTEN_IN_USE
from warren.cli.supervisor import ChildFailed, RestartPolicy, Stopped, Supervisor, set_pdeathsig, stop_process

log = logging.getLogger("warren.up")

DEFAULT_AGENT_PORT = 50051
PORT_TRIES = 3  # ports picked for a first start whose agent finds its port taken
# `warren agent` reads its one-time registration token from here (cli/agent.py).
TOKEN_ENV = "WARREN_REGISTRATION_TOKEN"  # noqa: S105 - a variable name, not a secret


def local_agent_unavailable() -> str | None:
    """Why this machine cannot run the local agent, or None."""
    if os.geteuid() != 0:
        return "the local host agent needs root (namespaces, cgroups, overlayfs): run `sudo warren up`"
    missing = [b for b in ("ip", "iptables", "mount", "debootstrap", "unshare") if not shutil.which(b)]
    if not (shutil.which("runc") or shutil.which("crun")):
        missing.insert(0, "runc")
    if missing:
        hint = "apt install runc iptables debootstrap"
        return f"missing host programs for the local agent: {', '.join(missing)} ({hint})"
    return None


class _ListenTaken(ChildFailed):
    """A first start's agent found its port taken before registering (its token unspent)."""


def _pick_port(preferred: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))  # 0: any free port
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register_local_host(database_url: str) -> str:
    from warren.cp.db.engine import make_engine
    from warren.cp.services.hosts import create_local_host

    async def go() -> str:
        engine = make_engine(database_url, pool_size=1)
        try:
            host_id, token = await create_local_host(engine)
            log.info("created local host %s", host_id)
            return token
        finally:
            await engine.dispose()

    return asyncio.run(go())


class LocalAgentChild:
    """A ``warren up`` child: ``warren agent`` on 127.0.0.1, registered to the local CP."""

    name = "agent"

    def __init__(
        self,
        home: Path,
        cp_url: str,
        database_url: str,
        env: dict[str, str],
        *,
        port: int = DEFAULT_AGENT_PORT,
        ready_timeout: float = 60.0,
        warm_pool: str | None = None,
    ) -> None:
        self.data_dir = home / "agent"
        self.cp_url = cp_url
        self.database_url = database_url
        self.env = env
        self.port = port
        self.ready_timeout = ready_timeout
        self.warm_pool = warm_pool  # `warren up --warm-pool`, passed on as the agent's own flag
        self.process: subprocess.Popen[bytes] | None = None
        self.removed = False
        self.restart_policy = RestartPolicy()

    def _argv(self, listen: str, register: bool) -> list[str]:
        argv = [sys.executable, "-m", "warren.cli.main", "agent", "--listen", listen,
                "--data-dir", str(self.data_dir), "--cp", self.cp_url]  # fmt: skip
        if register:
            argv += ["--address", listen]
        if self.warm_pool is not None:
            argv += ["--warm-pool", self.warm_pool]
        return argv

    def start(self, supervisor: Supervisor) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Searchable, not listable: sandbox root (an unprivileged host uid) must reach sandboxes/;
        # the credentials file itself is 0600.
        self.data_dir.chmod(0o711)
        listen_file = self.data_dir / "listen-address"
        if credentials_path(self.data_dir).exists() and listen_file.exists():
            # The address the CP knows this host by: taken, it is the operator's to free.
            self._run(supervisor, listen_file.read_text().strip(), None)
            return
        token = _register_local_host(self.database_url)
        for attempt in range(PORT_TRIES):
            # The first try's port may be taken between the pick and the agent's bind (another
            # process on the machine): the agent says so before it spends the token.
            listen = f"127.0.0.1:{_pick_port(self.port if attempt == 0 else 0)}"
            listen_file.write_text(listen + "\n")
            try:
                self._run(supervisor, listen, token)
                return
            except _ListenTaken:
                log.warning("the local agent's port %s was taken before it listened; picking another", listen)
        raise ChildFailed(f"the local agent found its port taken {PORT_TRIES} times")

    def _run(self, supervisor: Supervisor, listen: str, token: str | None) -> None:
        """The agent started on ``listen`` (registering with ``token``), once it answers there."""
        creds = credentials_path(self.data_dir)
        env = {k: v for k, v in self.env.items() if k != TOKEN_ENV}
        if token:
            env[TOKEN_ENV] = token
        self.process = subprocess.Popen(
            self._argv(listen, token is not None), env=env, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=set_pdeathsig(signal.SIGTERM),
        )  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout
        host, port = listen.rsplit(":", 1)
        while True:
            if (code := self.process.poll()) is not None:
                if code == EXIT_LISTEN_IN_USE and token is not None:
                    raise _ListenTaken
                raise ChildFailed(f"the local agent exited with code {code} while starting")
            if supervisor.stopping.is_set():
                raise Stopped
            if creds.exists():
                with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
                    return
            if time.monotonic() > deadline:
                raise ChildFailed(f"the local agent was not ready after {self.ready_timeout:.0f}s")
            supervisor.stopping.wait(0.1)

    def poll(self) -> int | None:
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None and not credentials_path(self.data_dir).exists():
            # The host was deleted on the CP: the agent cleaned up and left. Not a failure.
            if not self.removed:
                log.warning("the local host was removed from the control plane; its agent has stopped")
                self.removed = True
            return None
        return code

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            # The agent keeps its sandboxes for re-adoption; give it its grace period.
            stop_process(proc, "the local agent", signal.SIGTERM, 45)
