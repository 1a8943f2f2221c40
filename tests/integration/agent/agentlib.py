"""Real `warren agent` processes for the agent's integration tests, plus leak checks.

The `minimal` template is debootstrapped once (~30-50 s) into a cache shared by every test run
and every agent (``WARREN_TEST_MINIMAL_DIR``, default /var/cache/warren-test/templates/minimal);
later runs start at once.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

MINIMAL_CACHE = Path(os.environ.get("WARREN_TEST_MINIMAL_DIR", "/var/cache/warren-test/templates/minimal"))
# The first create of a run may build the template.
FIRST_CREATE_TIMEOUT = 900.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """One agent process on 127.0.0.1:<free port>, with its own data dir and fake clock file."""

    def __init__(self, root: Path, runtime: str = "runc", env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_env = env or {}
        self.data_dir = root / "data"
        self.clock_file = root / "clock"
        self.log_path = root / "agent.log"
        self.runtime = runtime
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.HostAgentStub

    def start(self) -> Agent:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.clock_file.exists():
            self.clock_file.write_text("0")
        inherited = {k: v for k, v in os.environ.items() if k != "WARREN_AGENT_CREATE_CONCURRENCY"}
        env = {
            **inherited,
            "WARREN_MINIMAL_DIR": str(MINIMAL_CACHE),
            "WARREN_FAKE_CLOCK_FILE": str(self.clock_file),
            "WARREN_AGENT_METRICS_INTERVAL": "1",
            **self.extra_env,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "warren.agent", "--listen", self.address,
                 "--data-dir", str(self.data_dir), "--runtime", self.runtime],
                env=env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.HostAgentStub(self.channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=1)
                return self
            except grpc.RpcError:
                time.sleep(0.1)
        raise RuntimeError(f"agent did not come up:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def set_clock_offset(self, seconds: float) -> None:
        self.clock_file.write_text(str(seconds))

    # -- conveniences --------------------------------------------------------------------

    def create(self, **kw: object) -> pb.CreateSandboxResponse:
        timeout = FIRST_CREATE_TIMEOUT if not (MINIMAL_CACHE / "template.json").exists() else 120
        return self.stub.CreateSandbox(pb.CreateSandboxRequest(**kw), timeout=timeout)  # type: ignore[arg-type]

    def exec(self, sb_id: str, cmd: str, *args: str, **kw: object) -> pb.ExecResponse:
        return self.stub.Exec(pb.ExecRequest(sandbox_id=sb_id, cmd=cmd, args=list(args), **kw), timeout=120)  # type: ignore[arg-type]

    def py(self, sb_id: str, code: str, *args: str, **kw: object) -> pb.ExecResponse:
        return self.exec(sb_id, "python3", "-c", code, *args, **kw)

    def destroy_all(self) -> None:
        for sb in self.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes:
            self.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb.sandbox_id), timeout=60)


def slot_of(host_ip: str) -> int:
    return (int(ipaddress.IPv4Address(host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))) // 4


def leaks(agent: Agent, sb_id: str, host_ip: str) -> list[str]:
    """Everything a destroyed sandbox could leave behind on the host."""
    found: list[str] = []
    slot = slot_of(host_ip)
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if sb_id in line]
    try:
        holder = Path(f"/run/warren/netslots/{slot}").read_text().split("\n")[1]
    except (OSError, IndexError):
        holder = None
    # A freed slot may already serve another sandbox or the agent's pool of ready slots.
    if holder is None or holder == sb_id:
        if holder is not None:
            found.append(f"slot claim {slot}")
        if os.path.exists(f"/run/netns/warren-s{slot}"):
            found.append(f"netns warren-s{slot}")
        if os.path.exists(f"/sys/class/net/wv{slot}"):
            found.append(f"veth wv{slot}")
        for table in ("filter", "nat"):
            dump = subprocess.run(["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True)
            found += [f"iptables {line}" for line in dump.stdout.splitlines() if f"wv{slot} " in line + " "]
    found += [f"cgroup {d}" for d in glob.glob(f"/sys/fs/cgroup/*/warren/{sb_id}")]
    for cg in glob.glob("/proc/[0-9]*/cgroup"):
        try:
            with open(cg) as f:
                if sb_id in f.read():
                    found.append(f"process {cg.split('/')[2]}")
        except OSError:
            pass
    for p in (agent.data_dir / "sandboxes" / sb_id, agent.data_dir / agent.runtime / sb_id):
        if p.exists():
            found.append(f"path {p}")
    return found


def wait_no_leaks(agent: Agent, sb_id: str, host_ip: str, timeout: float = 5.0) -> list[str]:
    # Process exit and cgroup removal finish asynchronously in the kernel: allow a moment.
    deadline = time.monotonic() + timeout
    while True:
        found = leaks(agent, sb_id, host_ip)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def zombies_of(pid: int) -> list[int]:
    out = []
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(st.split("/")[2]))
    return out
