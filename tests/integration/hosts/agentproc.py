"""Real ``warren agent`` processes on loopback addresses (127.0.0.2, .3, …), registered to a
control plane through its API, the way an operator does it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from warren import ids
from warren.agent.control_plane import load_credentials

AGENT_PORT = 50561
# Heartbeats every second so tests see recovery at once; every other rule keeps its real value.
HEARTBEAT_S = "1"


def minimal_cache_env() -> dict[str, str]:
    """The debootstrapped ``minimal`` template cache the agent tests share (built once)."""
    cache = os.environ.get("WARREN_TEST_MINIMAL_DIR", "/var/cache/warren-test/templates/minimal")
    return {"WARREN_MINIMAL_DIR": cache}


def agent_root() -> Path:
    """A fresh directory for agents' data dirs. Not pytest's tmp_path: its base is 0700, and a
    sandbox's root is an unprivileged host uid that must traverse to its own directory."""
    base = Path("/tmp/warren-hosts-tests")
    base.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    root.chmod(0o755)
    return root


class AgentProcess:
    def __init__(
        self,
        ip: str,
        data_dir: Path,
        cp_url: str,
        *,
        port: int = AGENT_PORT,
        cpus: set[int] | None = None,
        heartbeat_s: str = HEARTBEAT_S,
    ) -> None:
        """``cpus`` pins the agent (and so every runtime process and sandbox it starts) to those
        CPUs; the benchmarks use it, with the real heartbeat interval, to keep agents off the
        control plane's cores."""
        self.ip = ip
        self.cpus = cpus
        self.heartbeat_s = heartbeat_s
        self.address = f"{ip}:{port}"
        self.data_dir = data_dir
        self.cp_url = cp_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"agent-{ip}.log"
        self.host_id = ""

    def command(self, register_token: str | None) -> list[str]:
        cmd = [sys.executable, "-m", "warren.agent", "--listen", self.address,
               "--data-dir", str(self.data_dir), "--cp", self.cp_url, "--address", self.address]  # fmt: skip
        if register_token:
            cmd += ["--register", register_token]
        return cmd

    async def start(self, register_token: str | None = None, *, wait_online: Any = None) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "WARREN_HEARTBEAT_INTERVAL_S": self.heartbeat_s, **minimal_cache_env()}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        cmd = self.command(register_token)
        if self.cpus:
            # Pinned from its first instruction, so every thread and child inherits the mask.
            cmd = ["taskset", "-c", ",".join(map(str, sorted(self.cpus))), *cmd]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        log.close()
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.address} exited {self.proc.returncode}:\n{self.log_tail()}")
            creds = load_credentials(self.data_dir)
            # Its own "ready" line, not merely an open port: a stale agent could hold the port.
            if creds is not None and "event=agent_ready" in self.log_tail(400) and await self._listening():
                self.host_id = creds.host_id
                return self
            await asyncio.sleep(0.1)
        raise RuntimeError(f"agent {self.address} did not come up:\n{self.log_tail()}")

    async def _listening(self) -> bool:
        try:
            _, w = await asyncio.open_connection(self.ip, int(self.address.rsplit(":", 1)[1]))
        except OSError:
            return False
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()
        return True

    @property
    def host_uuid(self) -> Any:
        return ids.parse_id(ids.Kind.HOST, self.host_id)

    def credentials(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "host-credentials.json").read_text()))

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    async def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        for _ in range(int(timeout * 10)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.1)
        raise TimeoutError(f"agent {self.address} did not exit:\n{self.log_tail()}")

    async def destroy_all(self, pool: Any) -> None:
        """Destroy every sandbox this agent holds (over the CP's mTLS client ``pool``): a plain
        stop keeps them for re-adoption, and test runs must not leave containers behind."""
        if self.proc is None or self.proc.poll() is not None or not self.host_id:
            return
        from warren.rpc import hostagent_pb2 as pb

        with contextlib.suppress(Exception):
            os.kill(self.proc.pid, signal.SIGCONT)
            client = pool.get_for(self.host_uuid, self.address)
            listed = await client.call("ListSandboxes", pb.ListSandboxesRequest(), deadline=10)
            reqs = [pb.DestroySandboxRequest(sandbox_id=s.sandbox_id) for s in listed.sandboxes]
            await asyncio.gather(
                *(client.call("DestroySandbox", r, deadline=60) for r in reqs), return_exceptions=True
            )

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await self.wait_exit(45)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
