"""Session 12's attack on the host side: the agent (root) touching what a sandbox controls.

Each probe is run as the tenant would: the public API with its key and scripts inside its own
sandboxes. The host-side checks (``/proc/locks``, ``ss``) only observe; they are the oracle.

* A lease on ``/etc/resolv.conf`` (sandbox root owns that identity file, so the kernel lets it
  hold one): changing the sandbox's egress rules made the agent open the file on its event
  loop, which waited for the lease break (45 s, or until the holder let go) with every other
  sandbox's call. Fixed: the agent's loop never waits for a lease.
* The sandbox's resolver over TCP, queries sent and answers never read: each connection stayed
  open for good, its answers held in the agent's buffers (and kept after the sandbox was gone).
  Fixed: an answer not taken within the idle time resets the connection.
* A UDP flood of its resolver: every packet reached the agent's event loop. Fixed: a rate per
  sandbox in the kernel (``WARREN-DNS``).
* A tree deeper than Python's recursion limit in a host-local (gVisor) snapshot. Fixed:
  ``agent/trees.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.attack_helpers import wait_until
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# Inside the sandbox, as root: a lease on the resolv.conf the agent rewrites, never let go.
LEASE_HOLDER = r"""
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # asked to let go: it does not
write = sys.argv[1] == "write"
fd = os.open("/etc/resolv.conf", os.O_RDWR if write else os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK if write else fcntl.F_RDLCK)
with open("/tmp/leased.tmp", "w") as f:
    f.write(str(os.fstat(fd).st_ino))
os.rename("/tmp/leased.tmp", "/tmp/leased")
while True:
    time.sleep(3600)
"""


def _lease_line(inode: int) -> str | None:
    """The ``/proc/locks`` line of a lease on ``inode``, if there is one."""
    with open("/proc/locks") as f:
        for line in f:
            if " LEASE " in f" {line} " and re.search(rf":{inode} ", line):
                return line
    return None


def _start(t: Tenant, sb: str, name: str, script: str, *args: str) -> None:
    run = f"nohup python3 /tmp/{name}.py {' '.join(args)} >/tmp/{name}.log 2>&1 &"
    t.sh(sb, f"cat > /tmp/{name}.py <<'EOF'\n{script}\nEOF\n{run}")


def _out(t: Tenant, sb: str, script: str) -> str:
    """The stripped stdout of ``script`` in the sandbox ("" while it fails)."""
    return str(t.x(sb, script).json()["stdout"]).strip()


@pytest.mark.parametrize("kind", ["read", "write"])
def test_a_lease_on_resolv_conf_does_not_stall_the_agent(
    platform: Platform, alice: Tenant, bob: Tenant, kind: str
) -> None:
    attacker, victim = alice.create(), bob.create()
    holder = 0
    try:
        _start(alice, attacker, "hold", LEASE_HOLDER, kind)
        inode = int(wait_until(lambda: _out(alice, attacker, "cat /tmp/leased"), 60, "the lease"))
        assert _lease_line(inode) is not None, "the lease is not in /proc/locks"
        # A name rule: the agent points the sandbox's resolv.conf at its own resolver.
        result: dict[str, httpx.Response] = {}
        rules, path = {"allow_out": ["example.com"]}, f"/v1/sandboxes/{attacker}/network"
        patch = threading.Thread(
            target=lambda: result.setdefault("r", alice.w("PATCH", path, rules, 300)), daemon=True
        )
        patch.start()
        line = wait_until(lambda: (ln := _lease_line(inode)) and "BREAKING" in ln and ln, 60, "its break")
        holder = int(line.split()[4])
        # Another tenant's call while the lease is being broken: answered without waiting for it.
        assert bob.sh(victim, "echo alive").strip() == "alive"
        still = _lease_line(inode)
        assert still is not None and "BREAKING" in still, (
            "bob's exec was answered only once alice's lease was gone: the agent waited for it"
        )
        # The holder goes (the kernel would end the lease at lease-break-time): the update lands.
        os.kill(holder, signal.SIGKILL)
        holder = 0
        patch.join(120)
        assert not patch.is_alive() and result["r"].status_code == 200, result
        gateway = alice.sh(attacker, "cat /etc/resolv.conf").split()
        assert gateway[0] == "nameserver" and ipaddress.ip_address(gateway[1]).is_private, gateway
    finally:
        if holder:
            os.kill(holder, signal.SIGKILL)
        alice.w("DELETE", f"/v1/sandboxes/{attacker}")
        bob.w("DELETE", f"/v1/sandboxes/{victim}")


# Inside the sandbox: four TCP connections to its resolver (the most it may hold), each sent
# queries for a denied name (answered at once) and never read; they stay open.
TCP_FLOOD = r"""
import socket, struct, sys, threading, time
server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "blocked.example".split(".")) + b"\0\0\1\0\1"
msg = struct.pack("!H", len(q)) + q
socks, sent = [], []
def flood(s):
    s.settimeout(5)  # the agent stopped reading it: the flood is done
    n = 0
    try:
        for _ in range(4000):
            s.sendall(msg * 16); n += 16
    except OSError:
        pass
    sent.append(n)
for _ in range(4):
    s = socket.create_connection((server, 53), timeout=10)
    socks.append(s)
ts = [threading.Thread(target=flood, args=(s,)) for s in socks]
for t in ts: t.start()
for t in ts: t.join()
open("/tmp/flooded", "w").write(" ".join(map(str, sent)))
while True:
    time.sleep(3600)
"""

# Inside the sandbox: one query over TCP, the answer's rcode (3: NXDOMAIN) or the error.
TCP_QUERY = r"""
import socket, struct
server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
q = struct.pack("!HHHHHH", 0x4343, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "blocked.example".split(".")) + b"\0\0\1\0\1"
try:
    s = socket.create_connection((server, 53), timeout=10); s.settimeout(10)
    s.sendall(struct.pack("!H", len(q)) + q)
    r = s.recv(2 + 512)
    print("rcode", r[2 + 3] & 0xF if len(r) > 5 else "short")
except OSError as e:
    print("error", type(e).__name__)
"""


def _resolver_conns(sandbox_ip: str) -> int:
    """TCP connections the agent's resolvers hold with ``sandbox_ip`` (the host's netns)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", "( sport = :53 )", "dst", sandbox_ip],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return len([ln for ln in out.splitlines() if ln.strip()])


def test_unread_dns_answers_do_not_hold_the_resolver(platform: Platform, alice: Tenant) -> None:
    sb = alice.create(network={"deny_out": ["blocked.example"]})
    try:
        ip = alice.w("GET", f"/v1/sandboxes/{sb}").json()["host_ip"]
        _start(alice, sb, "flood", TCP_FLOOD)
        sent = wait_until(lambda: _out(alice, sb, "cat /tmp/flooded"), 120, "the flood")
        assert sum(map(int, sent.split())) > 0, sent
        # The agent stopped reading them (its answers unread): every connection is reset within
        # its idle time, not kept for good.
        deadline = time.monotonic() + 60
        while _resolver_conns(ip) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _resolver_conns(ip) == 0, "the resolver still holds connections nobody reads"
        # The resolver answers the sandbox over TCP again (its 4 connections came back).
        out = alice.sh(sb, f"cat > /tmp/q.py <<'EOF'\n{TCP_QUERY}\nEOF\npython3 /tmp/q.py")
        assert json.dumps(out.split()) == json.dumps(["rcode", "3"]), out
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


# Inside a gVisor sandbox, on its disk (not /tmp, gVisor's own tmpfs): a chain of directories
# deeper than Python's recursion limit, its whole path still short of PATH_MAX on the host.
DEEP_TREE = r"""
import os
os.chdir("/root")
for _ in range(1200):
    os.mkdir("d")
    os.chdir("d")
with open("bottom", "w") as f:
    f.write("x")
"""


def _team_snapshots(platform: Platform, team_id: str) -> list[str]:
    """The entries of the team's host-local snapshot directory on the agent (not descended)."""
    d = platform.agents[0].data_dir / "templates" / "teams" / str(ids.parse_id(ids.Kind.TEAM, team_id))
    return sorted(os.listdir(d)) if d.is_dir() else []


def _sandbox_dir(platform: Platform, sb: str) -> bool:
    return (platform.agents[0].data_dir / "sandboxes" / sb).exists()


def test_a_deep_tree_in_a_host_local_snapshot(platform: Platform, alice: Tenant) -> None:
    """gVisor snapshots are host-local copies: the agent sized, removed and tore down their
    trees with Python's recursive walkers. A tree 1200 levels deep failed the snapshot after
    its copy was in place (kept on the host's disk, counted nowhere) and left a deleted
    snapshot's files, and the directory of a sandbox made from it, on the host for good."""
    before = _team_snapshots(platform, alice.team_id)
    src = alice.create(runtime="gvisor", memory_mb=256)
    name, made, snap = f"deep-{src[-8:]}", [], False
    try:
        alice.sh(src, f"cat > /root/deep.py <<'EOF'\n{DEEP_TREE}\nEOF\npython3 /root/deep.py")
        r = alice.w("POST", "/v1/snapshots", {"sandbox_id": src, "name": name}, 600)
        snap = r.status_code == 201
        assert snap, (r.status_code, r.text, _team_snapshots(platform, alice.team_id))
        made.append(alice.create(template=name))
        depth = "/".join(["d"] * 1200)
        assert alice.sh(made[0], f"cat /root/{depth}/bottom") == "x"
        for sb in made:
            assert alice.w("DELETE", f"/v1/sandboxes/{sb}").status_code in (200, 204)
        wait_until(lambda: not any(_sandbox_dir(platform, sb) for sb in made), 60, "its directory gone")
        assert alice.w("DELETE", f"/v1/snapshots/{name}").status_code == 204
        snap = False
        assert _team_snapshots(platform, alice.team_id) == before
    finally:
        for sb in [src, *made]:
            alice.w("DELETE", f"/v1/sandboxes/{sb}")
        if snap:
            alice.w("DELETE", f"/v1/snapshots/{name}")


# Inside the sandbox: queries for a denied name (answered at once, no upstream) to its resolver
# as fast as one process sends them, for argv[1] seconds; the answers counted as they come.
UDP_FLOOD = r"""
import json, socket, struct, sys, time
server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "blocked.example".split(".")) + b"\0\0\1\0\1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.connect((server, 53))
s.setblocking(False)
sent = answered = 0
def drain():
    global answered
    try:
        while s.recv(512):
            answered += 1
    except OSError:
        pass
start = time.monotonic()
while time.monotonic() - start < float(sys.argv[1]):
    for _ in range(64):
        try:
            s.send(q); sent += 1
        except OSError:
            pass
    drain()
elapsed = time.monotonic() - start
time.sleep(2); drain()
print(json.dumps({"sent": sent, "answered": answered, "elapsed": elapsed}))
"""
# The agent answers a sandbox's resolver at most this many packets a second (a burst of twice
# that), dropped past it in the kernel: egress_rules.DNS_PACKETS_PER_S.
DNS_RATE = 1000


def test_a_dns_flood_is_cut_before_the_agent(platform: Platform, alice: Tenant) -> None:
    """A sandbox flooding its resolver had every packet handled by the agent's event loop: one
    process in a 1-vCPU sandbox sent 284 416 queries in 8 s and 84 024 were answered (load 14;
    ~0.24 of a core of the agent at ~16 000 a second, load 10). Past its rate they are now
    dropped by the kernel, never reaching the agent (after: 8 714 answered of 200 384)."""
    sb = alice.create(network={"deny_out": ["blocked.example"]})
    try:
        alice.sh(sb, f"cat > /tmp/flood.py <<'EOF'\n{UDP_FLOOD}\nEOF")
        # 4 s of flood: the bound (~8 000 answers) is a fifth of what an agent answering every
        # packet answered in as long (~16 000 a second under load); 8 s told no more.
        got = json.loads(alice.sh(sb, "python3 /tmp/flood.py 4", timeout_sec=120))
        assert got["sent"] > 4 * DNS_RATE * got["elapsed"], f"the flood was too slow to tell: {got}"
        bound = DNS_RATE * (got["elapsed"] + 2) + 2 * DNS_RATE  # + its last 2 s of answers, a burst
        assert got["answered"] <= bound, f"the agent answered more than the sandbox's rate: {got}"
        # Its resolver still answers it once the flood stops.
        out = alice.sh(sb, f"cat > /tmp/q.py <<'EOF'\n{TCP_QUERY}\nEOF\npython3 /tmp/q.py")
        assert out.split() == ["rcode", "3"], out
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


def _data_port(platform: Platform) -> int:
    """The agent's dial data port, from its log (``event=dial_data_ready port=N``)."""
    found = re.findall(rb"event=dial_data_ready port=(\d+)", platform.agents[0].log_path.read_bytes())
    assert found, "the agent has no data port"
    return int(found[-1])


def _hold_places(host: str, port: int, n: int, stop: threading.Event) -> None:
    """A local user (not root: it needs nothing but a TCP connect): ``n`` silent connections to
    the data port, those the agent closed opened again every half second."""
    socks: list[socket.socket] = []
    try:
        while not stop.is_set():
            while len(socks) < n and not stop.is_set():
                try:
                    s = socket.create_connection((host, port), timeout=5)
                except OSError:
                    continue
                s.setblocking(False)
                socks.append(s)
            stop.wait(0.5)  # closed places retaken twice a second (no busy loop of reconnects)
            readable, _, _ = select.select(socks, [], [], 0)
            for s in readable:  # the agent closed it: its place is retaken
                with contextlib.suppress(OSError):
                    if s.recv(1):
                        continue
                socks.remove(s)
                s.close()
    finally:
        for s in socks:
            s.close()


def _connections_to(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True
    ).stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


def test_silent_connections_to_the_data_port_do_not_shut_previews_out(
    platform: Platform, bob: Tenant
) -> None:
    """The data port took at most 128 connections that had not sent their ticket, refusing
    the newest past that: a local process holding 128 silent ones (reopened as they were
    closed at 5 s) made every preview through this agent fail. Now the oldest gives way."""
    r = bob.w("POST", "/v1/sandboxes", {"template": "minimal"})
    assert r.status_code == 201, r.text
    sb, token = r.json()["id"], r.json()["traffic_token"]
    stop = threading.Event()
    port = _data_port(platform)
    host = platform.agents[0].ip  # a loopback address of its own
    holder = threading.Thread(target=_hold_places, args=(host, port, 128, stop), daemon=True)
    try:
        bob.sh(sb, "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        url = f"{platform.url}/v1/sandboxes/{sb}/ports/8000/"
        served = lambda: httpx.get(url, headers={"X-Warren-Traffic-Token": token}, timeout=30)  # noqa: E731
        wait_until(lambda: served().status_code == 200, 60, "bob's server")
        holder.start()
        wait_until(lambda: _connections_to(port) >= 128, 60, "the holder's places")
        codes = [served().status_code for _ in range(5)]
        assert codes == [200] * 5, f"bob's preview while a local process held the data port: {codes}"
    finally:
        stop.set()
        holder.join(30)
        bob.w("DELETE", f"/v1/sandboxes/{sb}")
