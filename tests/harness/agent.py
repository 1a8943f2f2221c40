"""One real ``warren agent`` process, in either of the two ways the tests run it:

* **standalone** (:meth:`AgentProcess.standalone`): insecure gRPC on ``127.0.0.1:<free port>``,
  no control plane, a fake clock file the test moves, a sync gRPC ``stub``. The agent's own
  tests drive it directly.
* **registered** (:meth:`AgentProcess.registered`): on a loopback address of its own
  (127.0.0.2, .3, ...), registered to a control plane with a one-time token and serving only over
  mutual TLS, heartbeating every second, the way an operator runs it.

Lifecycle calls are sync (``start``, ``stop``, ``kill9``); a test on the event loop of an
in-process control plane uses ``astart``/``astop``, which wait in a thread so the CP it shares
the loop with keeps answering the agent's registration.

Every agent follows the test process that started it (:mod:`tests.harness.tether`): when that
process ends without stopping it (a killed run), the agent destroys its sandboxes and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from tests.harness import tether
from tests.harness.machine import (
    MINIMAL_CACHE,
    free_port,
    listening,
    log_lines_at,
    minimal_cache_env,
    scratch_dir,
)
from warren import ids
from warren.agent.control_plane import load_credentials
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

AGENT_PORT = 50561
# Heartbeats every second so tests see recovery at once; every other rule keeps its real value.
HEARTBEAT_S = "1"
# The first create of a run may build the template.
FIRST_CREATE_TIMEOUT = 900.0
START_TIMEOUT_S = 60.0


# Many agents share this machine: none takes the default metrics port unless a test asks
# (env={"WARREN_AGENT_METRICS_LISTEN": …}).
NO_METRICS_PORT = {"WARREN_AGENT_METRICS_LISTEN": "0"}


class AgentProcess:
    """Use :meth:`standalone` or :meth:`registered` to make one."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        ip: str = "127.0.0.1",
        port: int | None = None,
        cp_url: str | None = None,
        runtime: str | None = None,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        heartbeat_s: str = HEARTBEAT_S,
    ) -> None:
        self.root = data_dir.parent
        self.data_dir = data_dir
        self.log_path = log_path
        self.ip = ip
        self.address = f"{ip}:{port if port is not None else free_port(ip)}"
        self.cp_url = cp_url
        self.runtime = runtime
        self.extra_env = env or {}
        self.cpus = cpus
        self.heartbeat_s = heartbeat_s
        self.clock_file = self.root / "clock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.HostAgentStub
        self.host_id = ""

    @classmethod
    def standalone(cls, root: Path, runtime: str = "runc", env: dict[str, str] | None = None) -> AgentProcess:
        """An agent with no control plane under ``root`` (data, log, clock file), over insecure
        gRPC on a free port of 127.0.0.1. ``env`` adds to (and overrides) its environment."""
        return cls(root / "data", root / "agent.log", runtime=runtime, env=env)

    @classmethod
    def registered(
        cls,
        ip: str,
        data_dir: Path,
        cp_url: str,
        *,
        port: int = AGENT_PORT,
        cpus: set[int] | None = None,
        heartbeat_s: str = HEARTBEAT_S,
    ) -> AgentProcess:
        """An agent on ``ip:port`` for the control plane at ``cp_url``; ``start(token)`` registers
        it. ``cpus`` pins it (and so every runtime process and sandbox it starts) to those CPUs:
        the benchmarks use it, with the real heartbeat interval, to keep agents off the control
        plane's cores."""
        log = data_dir.parent / f"agent-{ip}.log"
        return cls(data_dir, log, ip=ip, port=port, cp_url=cp_url, cpus=cpus, heartbeat_s=heartbeat_s)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    # -- lifecycle --------------------------------------------------------------------------

    def command(self, register_token: str | None = None) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "warren.agent",
            "--listen",
            self.address,
            "--data-dir",
            str(self.data_dir),
        ]
        if self.runtime is not None:
            cmd += ["--runtime", self.runtime]
        if self.cp_url is not None:
            cmd += ["--cp", self.cp_url, "--address", self.address]
        if register_token:
            cmd += ["--register", register_token]
        if self.cpus:
            # Pinned from its first instruction, so every thread and child inherits the mask.
            cmd = ["taskset", "-c", ",".join(map(str, sorted(self.cpus))), *cmd]
        return cmd

    def environment(self) -> dict[str, str]:
        if self.cp_url is not None:
            return {
                **os.environ, "WARREN_HEARTBEAT_INTERVAL_S": self.heartbeat_s, **minimal_cache_env(),
                **NO_METRICS_PORT, **tether.agent_env(),
            }  # fmt: skip
        # A standalone agent's create concurrency is what the test asks for, not the caller's.
        inherited = {k: v for k, v in os.environ.items() if k != "WARREN_AGENT_CREATE_CONCURRENCY"}
        return {
            **inherited,
            **minimal_cache_env(),
            "WARREN_FAKE_CLOCK_FILE": str(self.clock_file),
            "WARREN_AGENT_METRICS_INTERVAL": "1",
            **NO_METRICS_PORT,
            **self.extra_env,
            **tether.agent_env(),
        }

    def start(self, register_token: str | None = None) -> AgentProcess:
        """Start the process and return once it serves (a registered one: once registered)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.cp_url is None and not self.clock_file.exists():
            self.clock_file.write_text("0")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(register_token), env=self.environment(), stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        if self.cp_url is None:
            self.channel = grpc.insecure_channel(self.address)
            self.stub = pb_grpc.HostAgentStub(self.channel)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.address} exited {self.proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"agent {self.address} did not come up:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self.cp_url is None:
            try:
                self.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return True
        creds = load_credentials(self.data_dir)
        # Its own "ready" line, not merely an open port: a stale agent could hold the port.
        if (
            creds is None
            or "event=agent_ready" not in self.log_tail(400)
            or not listening(self.ip, self.port)
        ):
            return False
        self.host_id = creds.host_id
        return True

    async def astart(self, register_token: str | None = None) -> AgentProcess:
        return await asyncio.to_thread(self.start, register_token)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, should the test have stopped it), then SIGKILL of its whole
        session if it is still there after 45 s. A plain stop keeps its sandboxes, as a
        production agent restart does: :meth:`destroy_all` first when the test is done."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._close()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def disconnect(self) -> None:
        """Close the test's channel to a running agent, which keeps running. An open gRPC
        channel keeps gRPC's threads in the test process, and its fork handlers then break the
        tests that fork it (the guest's ``run_as``, a confined converter's probe)."""
        self._close()

    def reconnect(self) -> None:
        """A channel to the running standalone agent again, after :meth:`disconnect`."""
        if self.channel is None and self.cp_url is None:
            self.channel = grpc.insecure_channel(self.address)
            self.stub = pb_grpc.HostAgentStub(self.channel)

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

    def warnings_tail(self, n: int = 12) -> str:
        """The last ``n`` WARNING, ERROR and CRITICAL lines of its log: what a failed test's
        report shows (a sandbox's memory wall handed back, a teardown that failed)."""
        return log_lines_at(self.log_path, ("WARNING", "ERROR", "CRITICAL"), n)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- registered ---------------------------------------------------------------------------

    @property
    def host_uuid(self) -> Any:
        return ids.parse_id(ids.Kind.HOST, self.host_id)

    def credentials(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "host-credentials.json").read_text()))

    async def destroy_all_over(self, pool: Any) -> None:
        """Destroy every sandbox a registered agent holds, over the CP's mTLS client ``pool``
        (its only clients): test runs must not leave containers behind."""
        if self.proc is None or self.proc.poll() is not None or not self.host_id:
            return
        with contextlib.suppress(Exception):
            os.kill(self.proc.pid, signal.SIGCONT)
            client = pool.get_for(self.host_uuid, self.address)
            listed = await client.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=10)
            reqs = [pb.DestroySandboxRequest(sandbox_id=s.sandbox_id) for s in listed.sandboxes]
            await asyncio.gather(
                *(client.stub.DestroySandbox(r, timeout=60) for r in reqs), return_exceptions=True
            )

    # -- standalone: its sync stub ---------------------------------------------------------------

    def set_clock_offset(self, seconds: float) -> None:
        self.clock_file.write_text(str(seconds))

    def create(self, **kw: object) -> pb.CreateSandboxResponse:
        timeout = FIRST_CREATE_TIMEOUT if not (MINIMAL_CACHE / "template.json").exists() else 120
        return self.stub.CreateSandbox(pb.CreateSandboxRequest(**kw), timeout=timeout)  # type: ignore[arg-type]

    def exec(self, sb_id: str, cmd: str, *args: str, **kw: object) -> pb.ExecResponse:
        return self.stub.Exec(pb.ExecRequest(sandbox_id=sb_id, cmd=cmd, args=list(args), **kw), timeout=120)  # type: ignore[arg-type]

    def py(self, sb_id: str, code: str, *args: str, **kw: object) -> pb.ExecResponse:
        return self.exec(sb_id, "python3", "-c", code, *args, **kw)

    def finish(self) -> None:
        """The end of a test's agent: every sandbox it still holds destroyed (when it still
        runs), then stopped, so that nothing is left behind however the test went."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.destroy_all()
        finally:
            self.stop()

    def destroy_all(self) -> None:
        """Destroy every sandbox a standalone agent holds."""
        for sb in self.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes:
            self.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb.sandbox_id), timeout=60)


@contextlib.contextmanager
def scratch_agent(
    suite: str, runtime: str = "runc", env: dict[str, str] | None = None
) -> Iterator[AgentProcess]:
    """A started standalone agent in a fresh scratch dir of ``suite`` (machine.scratch_dir);
    finished, and its directory removed, afterwards."""
    root = scratch_dir(suite)
    agent = AgentProcess.standalone(root / "agent", runtime=runtime, env=env).start()
    try:
        yield agent
    finally:
        agent.finish()
        shutil.rmtree(root, ignore_errors=True)
