"""Simulated machines on this one: each a network and mount namespace of its own, so a test can
follow an operator's instructions (``/etc/warren/…``, ``/var/lib/warren/…``, port 5432, fixed
addresses) once per "machine" without touching the real host or the other machines.

A :class:`Machine` is a holder process (``unshare --net --mount`` running ``sleep``) whose
namespaces every command enters with ``nsenter``. Inside it: ``/etc`` is an overlay over the
host's (writes land in the machine's dir), ``/opt``, ``/var/lib/warren``, ``/run/warren`` and
``/run/netns`` are the machine's own directories (so agents' network-slot claims and sandbox
namespaces never meet another machine's), ``/sys`` is a sysfs of the machine's network
namespace (with the host's cgroup mounts), and ``lo`` is up. :func:`link` joins machines on
one bridge in the first machine's namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BRIDGE = "wbr0"

_SETUP = r"""
set -e
D="$1"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$D/etc.upper,workdir=$D/etc.work" /etc
mount --bind "$D/opt" /opt
mount --bind "$D/varlib" /var/lib/warren
mount --bind "$D/run-warren" /run/warren
mount --bind "$D/run-netns" /run/netns
mount -t sysfs sysfs "$D/sys"
mount --rbind /sys/fs/cgroup "$D/sys/fs/cgroup"
umount -l /sys
mount --move "$D/sys" /sys
ip link set lo up
echo ready
exec sleep 100000
"""


class Machine:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.dir = root / name
        self.holder: subprocess.Popen[str] | None = None
        self.children: list[subprocess.Popen[bytes]] = []

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    @property
    def etc(self) -> Path:
        """What the machine wrote under /etc."""
        return self.dir / "etc.upper"

    def start(self) -> Machine:
        for sub in ("etc.upper", "etc.work", "opt", "varlib", "run-warren", "run-netns", "sys", "home"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("", "varlib", "opt"):
            (self.dir / sub).chmod(0o755)  # sandbox root walks /var/lib/warren/agent
        for mount_point in ("/var/lib/warren", "/run/warren", "/run/netns"):
            Path(mount_point).mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private",
             "sh", "-c", _SETUP, "sh", str(self.dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.holder.kill()
            raise RuntimeError(f"machine {self.name} did not start: {line} {self.holder.stdout.read()}")
        return self

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"PATH": PATH, "HOME": str(self.dir / "home"), "LANG": "C.UTF-8", **(extra or {})}

    def argv(self, *argv: str, cwd: Path | None = None) -> list[str]:
        # nsenter -m starts in the machine's /, unless told a directory.
        where = [f"--wd={cwd}"] if cwd is not None else []
        return ["nsenter", "-t", str(self.pid), "-m", "-n", *where, "--", *argv]

    def run(
        self, script: str, *, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
    ) -> str:
        """Run a bash script in the machine; its stdout. A failure raises with its output."""
        done = subprocess.run(
            self.argv("bash", "-eo", "pipefail", "-c", script, cwd=cwd), env=self.env(env),
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(
                f"on {self.name}, exit {done.returncode}:\n{script}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        return done.stdout

    def spawn(
        self, argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """A long-running process in the machine (stopped by :meth:`stop`)."""
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                self.argv(*argv, cwd=cwd), env=self.env(env), stdout=f, stderr=f, start_new_session=True
            )
        self.children.append(proc)
        return proc

    def stop(self) -> None:
        """SIGTERM the machine's processes (45 s, then SIGKILL), then its holder."""
        for proc in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.children):
            try:
                proc.wait(45)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait()


def link(hub: Machine, hub_cidr: str, others: dict[Machine, str]) -> None:
    """A bridge in ``hub`` with ``hub_cidr``; each other machine gets ``eth0`` with its CIDR,
    its veth's other end on the bridge."""
    hub.run(
        f"ip link add {BRIDGE} type bridge && ip addr add {hub_cidr} dev {BRIDGE} && ip link set {BRIDGE} up"
    )
    for i, (machine, cidr) in enumerate(others.items()):
        hub.run(f"ip link add wport{i} type veth peer name eth0 netns {machine.pid} && "
                f"ip link set wport{i} master {BRIDGE} up")  # fmt: skip
        machine.run(f"ip addr add {cidr} dev eth0 && ip link set eth0 up")


def _remove_leftover_fake_internet(host_ip: str) -> None:
    """Delete a killed run's fake internet that still holds ``host_ip``: its host end would
    keep the route, and the new server would never be reached ("did not start")."""
    held = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", f"{host_ip}/32"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in held.splitlines():
        veth = line.split()[1].split("@")[0]
        if veth.startswith("wtin"):  # ours; a different device with this address is a real clash
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", f"warren-inet-{veth[4:]}"], capture_output=True)


@contextlib.contextmanager
def fake_internet(host_ip: str, peer_ip: str, port: int = 8080) -> Iterator[str]:
    """A server "out there" for sandboxes to reach: Python's http.server on ``peer_ip:port`` in
    a network namespace of its own, behind a /30 veth whose host end is ``host_ip`` (TEST-NET
    addresses: nothing leaves the machine; names derived from ``host_ip``, so a killed run's
    leftover is found and replaced). Yields its URL; the server and the namespace (with its
    veth) are gone afterwards."""
    _remove_leftover_fake_internet(host_ip)
    tag = ipaddress.IPv4Address(host_ip).packed.hex()
    ns, veth = f"warren-inet-{tag}", f"wtin{tag}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # emptied by the sweep above
    # The server's request log goes to a file: a pipe nobody reads would fill and stop it.
    with tempfile.TemporaryFile() as log:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        server: subprocess.Popen[bytes] | None = None
        try:
            for cmd in (
                f"ip link add {veth} type veth peer name eth0 netns {ns}",
                f"ip addr add {host_ip}/30 dev {veth}",
                f"ip link set {veth} up",
                f"ip -n {ns} addr add {peer_ip}/30 dev eth0",
                f"ip -n {ns} link set eth0 up",
                f"ip -n {ns} link set lo up",
            ):
                subprocess.run(cmd.split(), check=True)
            server = subprocess.Popen(
                ["ip", "netns", "exec", ns, "python3", "-m", "http.server", "--bind", peer_ip, str(port)],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
            probe = f"import socket; socket.create_connection(('{peer_ip}', {port}), timeout=1)"
            deadline = time.monotonic() + 60
            while subprocess.run(["python3", "-c", probe], capture_output=True).returncode != 0:
                if server.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"the fake internet server exited: {log.read()[-2000:]!r}")
                assert time.monotonic() < deadline, "the fake internet server did not start"
                time.sleep(0.1)
            yield f"http://{peer_ip}:{port}/"
        finally:
            if server is not None:
                server.kill()
                server.wait()
            subprocess.run(["ip", "netns", "del", ns], check=True)
