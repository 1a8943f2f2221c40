"""The gVisor guest's TCP transport (docs/agent.md, "gVisor"), attacked as a hostile tenant would:
user code (``nobody``, and root where it matters) inside one gVisor sandbox, and the neighbour
sandbox on the same host. The port (49982) listens on every address of the sandbox and wants the
sandbox's secret first; nothing but the agent may ever talk to a guest through it.

A real standalone agent (the worker's shared one, tests/harness/shared_agent.py: these tests only
create and destroy sandboxes of their own), real runsc: the attacks run as commands inside the
sandboxes, the agent's own RPCs are the proof that the guest still serves it.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

PORT = 49982

# Connections from inside a sandbox, each to its (host, port) with its own bytes, all at once
# from one process (a python start in gVisor is ~1 s, and some outcomes are timeouts waited out:
# a dropped connect 3 s, an unanswered silence 5 s; a connect that is let through, and an answer,
# take milliseconds): prints what happened to each, in order; never raises.
PROBE = """
import json, socket, sys, threading
def probe(host, port, send):
    try:
        c = socket.create_connection((host, port), timeout=3)
    except OSError as e:
        return f"refused {type(e).__name__}"
    c.settimeout(5)
    try:
        c.sendall(bytes.fromhex(send))
        got = c.recv(1 << 16)
        return f"{'answered' if got else 'closed'} {got[:60].hex()}"
    except OSError as e:
        return f"closed {type(e).__name__}"
    finally:
        c.close()
targets = json.loads(sys.argv[1])
out = [""] * len(targets)
def one(i):
    out[i] = probe(*targets[i])
threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


def probe(agent: AgentProcess, sb_id: str, targets: list[tuple[str, int, bytes]], user: str) -> list[str]:
    """What each of ``targets`` made of its bytes, from inside ``sb_id`` (see PROBE)."""
    arg = json.dumps([[host, port, data.hex()] for host, port, data in targets])
    got: list[str] = json.loads(run(agent, sb_id, PROBE, arg, user=user))
    assert len(got) == len(targets), got
    return got


# Many connections to the guest port, held open (half of them mid-secret: a slowloris), by
# several processes so the user's own fd limit is not what stops them. Prints how many it holds
# once every process has opened its share, then keeps them until killed.
FLOOD = """
import os, socket, sys, time
total, procs = int(sys.argv[1]), int(sys.argv[2])
for i in range(procs):
    if os.fork() == 0:
        held = []
        for j in range(total // procs):
            try:
                c = socket.create_connection(("127.0.0.1", 49982), timeout=5)
                if j % 2:
                    c.send(b"0" * 63)  # one byte short of a secret
                held.append(c)
            except OSError:
                pass
            if j % 100 == 99:
                open(f"/tmp/flood.{i}", "w").write(str(len(held)))
        open(f"/tmp/flood.{i}", "w").write(str(len(held)))
        time.sleep(3600)
        os._exit(0)
"""

# Binding the guest's port before or beside the guest, every way a socket API offers.
BIND = """
import socket, sys
res = []
for host in ("0.0.0.0", "127.0.0.1", sys.argv[1]):
    for opt in ((), (socket.SO_REUSEADDR,), (socket.SO_REUSEADDR, socket.SO_REUSEPORT)):
        s = socket.socket()
        for o in opt:
            s.setsockopt(socket.SOL_SOCKET, o, 1)
        try:
            s.bind((host, 49982)); s.listen(1)
            res.append(f"BOUND {host} {opt}")
        except OSError as e:
            res.append(f"no {host} {opt} {e.errno}")
print("\\n".join(res))
"""


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


@contextlib.contextmanager
def gvisor_sandbox(agent: AgentProcess) -> Iterator[pb.CreateSandboxResponse]:
    r = agent.create(memory_mb=256, runtime="gvisor")
    try:
        yield r
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []


@pytest.fixture(scope="module")
def victim(agent: AgentProcess) -> Iterator[pb.CreateSandboxResponse]:
    with gvisor_sandbox(agent) as r:
        yield r


@pytest.fixture(scope="module")
def attacker(agent: AgentProcess) -> Iterator[pb.CreateSandboxResponse]:
    with gvisor_sandbox(agent) as r:
        yield r


def secret_of(agent: AgentProcess, sb_id: str) -> str:
    record = json.loads((agent.data_dir / "sandboxes" / sb_id / "record.json").read_text())
    secret = str(record["guest_secret"])
    assert len(secret) == 64
    return secret


def run(agent: AgentProcess, sb_id: str, code: str, *args: str, user: str = "nobody") -> str:
    res = agent.exec(sb_id, "python3", "-c", code, *args, user=user, timeout_sec=90)
    assert res.exit_code == 0, res.stderr.decode()
    return res.stdout.decode()


def guest_serves(agent: AgentProcess, sb_id: str) -> bool:
    return agent.exec(sb_id, "echo", "alive").stdout == b"alive\n"


def health_frame() -> bytes:
    body = b'{"op": "health"}'
    return len(body).to_bytes(4, "big") + b"\x01" + body


def test_user_code_cannot_read_the_secret(agent: AgentProcess, victim: pb.CreateSandboxResponse) -> None:
    """The secret is the only thing between a sandbox's user and its guest (which runs commands
    as root): it must not be anywhere `nobody` can read it."""
    secret = secret_of(agent, victim.sandbox_id)
    hunt = """
import os, sys
secret = sys.stdin.buffer.read().strip()  # not in our own command line
found, denied = [], 0
def look(path):
    global denied
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        denied += 1
        return
    if secret in data or secret.upper() in data:
        found.append(path)
for p in ("/run/warren/secret", "/proc/1/environ", "/proc/1/cmdline", "/proc/1/mem",
          "/proc/self/environ", "/proc/self/mountinfo", "/proc/1/mountinfo", "/proc/1/maps"):
    look(p)
for top in ("/run", "/etc", "/tmp", "/root", "/home", "/var", "/.warren", "/dev/shm", "/data"):
    for d, dirs, files in os.walk(top):
        for n in files:
            look(os.path.join(d, n))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for n in ("environ", "cmdline"):
            look(f"/proc/{pid}/{n}")
if secret in b"".join(k.encode() + v.encode() for k, v in os.environ.items()):
    found.append("own environment")
print("FOUND", found) if found else print("none", denied)
"""
    res = agent.exec(
        victim.sandbox_id, "python3", "-c", hunt, user="nobody", stdin=secret.encode(), timeout_sec=90
    )
    out = res.stdout.decode()
    assert res.exit_code == 0, res.stderr.decode()
    assert out.startswith("none"), out
    # The secret file itself exists and is root's (the tenant's root may read it: it can run
    # commands as root through the API anyway).
    as_root = run(agent, victim.sandbox_id, "print(open('/run/warren/secret').read())", user="root")
    assert as_root.strip() == secret


def test_a_neighbour_cannot_reach_the_guest_port_or_the_host(
    agent: AgentProcess, victim: pb.CreateSandboxResponse, attacker: pb.CreateSandboxResponse
) -> None:
    """From one gVisor sandbox (as root, holding even the victim's real secret): the victim's
    guest port, the host ends of both veths, and the agent's gRPC port are all out of reach."""
    secret = secret_of(agent, victim.sandbox_id).encode()
    attack = secret + health_frame()
    gw_attacker = attacker.host_ip.rsplit(".", 1)[0] + "." + str(int(attacker.host_ip.rsplit(".", 1)[1]) - 1)
    gw_victim = victim.host_ip.rsplit(".", 1)[0] + "." + str(int(victim.host_ip.rsplit(".", 1)[1]) - 1)
    targets = [
        (victim.host_ip, PORT),
        (gw_victim, PORT),
        (gw_attacker, PORT),
        (gw_attacker, agent.port),
        (gw_victim, agent.port),
    ]
    outs = probe(agent, attacker.sandbox_id, [(h, p, attack) for h, p in targets], "root")
    for (host, port), out in zip(targets, outs, strict=True):
        assert out.startswith("refused"), (host, port, out)
    assert guest_serves(agent, victim.sandbox_id)


def test_wrong_secrets_garbage_and_huge_frames_are_closed_unanswered(
    agent: AgentProcess, victim: pb.CreateSandboxResponse
) -> None:
    """As `nobody` inside the sandbox, on every address the guest listens on: a wrong secret (one
    character off, upper-case, 63 and 65 characters), garbage, a frame header claiming 4 GiB
    where the secret goes. The guest answers none of them, and serves the agent afterwards."""
    secret = secret_of(agent, victim.sandbox_id)
    off_by_one = secret[:-1] + ("0" if secret[-1] != "0" else "1")
    attempts = [
        off_by_one.encode() + health_frame(),
        secret.upper().encode() + health_frame() if secret.upper() != secret else b"X" * 64,
        b"\xff\xff\xff\xff\x01" + b"\x00" * 59 + health_frame(),
        bytes(range(256)) * 8,
        b"0" * 4096,
        b"",
    ]
    targets = [(host, PORT, data) for host in ("127.0.0.1", victim.host_ip) for data in attempts]
    # All at once: twelve connections waiting for their secret are far below the guest's
    # MAX_UNAUTHED (256), so each is judged alone.
    outs = probe(agent, victim.sandbox_id, targets, "nobody")
    for (host, _, data), out in zip(targets, outs, strict=True):
        assert out.startswith("closed"), (host, data[:80], out)
    assert guest_serves(agent, victim.sandbox_id)


def test_a_frame_over_the_limit_after_the_secret_is_refused(
    agent: AgentProcess, victim: pb.CreateSandboxResponse
) -> None:
    """With the right secret (the agent's position), a frame header claiming 4 GiB is an error
    frame, not an allocation."""
    secret = secret_of(agent, victim.sandbox_id).encode()
    with socket.create_connection((victim.host_ip, PORT), timeout=10) as c:
        c.sendall(secret + b"\xff\xff\xff\xff\x01")
        c.settimeout(30)
        got = b""
        while len(got) < 5 or len(got) < 5 + int.from_bytes(got[:4], "big"):
            chunk = c.recv(4096)
            if not chunk:
                break
            got += chunk
    assert got[4:5] == b"\x05" and b"too large" in got, got  # K_ERROR (5)
    assert guest_serves(agent, victim.sandbox_id)


# A fake guest: bind the sandbox's address on the guest's port (SO_REUSEADDR, which gVisor's
# netstack let through beside the guest's wildcard listener), wait for the agent's connection
# and keep the first 64 bytes it sends, world-readable.
FAKE_GUEST = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], 49982)); s.listen(5)
except OSError as e:
    print("bind refused", e.errno, flush=True); sys.exit(0)
print("listening", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(10)
got = b""
while len(got) < 64:
    chunk = c.recv(64 - len(got))
    if not chunk:
        break
    got += chunk
open("/tmp/stolen", "wb").write(got)
"""


def test_user_cannot_take_the_agents_connection_and_its_secret(agent: AgentProcess) -> None:
    """The attack as `nobody` would run it: a fake guest on <sandbox ip>:49982, then whatever
    makes the agent talk to the guest. The agent's next command must still reach the real guest,
    and nothing of the secret reach the fake one."""
    with gvisor_sandbox(agent) as r:
        sb = r.sandbox_id
        start = f"python3 -c {shlex.quote(FAKE_GUEST)} {r.host_ip} > /tmp/fake.out 2>&1 &"
        agent.exec(sb, "/bin/sh", "-c", start, user="nobody")
        deadline = time.monotonic() + 60
        while not (out := agent.exec(sb, "cat", "/tmp/fake.out").stdout) and time.monotonic() < deadline:
            time.sleep(0.5)
        for _ in range(3):  # each opens a new connection to the guest
            assert guest_serves(agent, sb)
        assert out.startswith(b"bind refused"), out
        stolen = agent.exec(sb, "sh", "-c", "cat /tmp/stolen 2>/dev/null; true").stdout
        assert secret_of(agent, sb).encode() not in stolen and stolen == b"", stolen


def test_user_cannot_bind_the_guest_port(agent: AgentProcess, victim: pb.CreateSandboxResponse) -> None:
    """A process that held 49982 would receive the agent's connection and, first thing on it, the
    secret: `nobody` must not be able to bind it on any address, with any socket option."""
    out = run(agent, victim.sandbox_id, BIND, victim.host_ip)
    assert "BOUND" not in out, out
    out = run(agent, victim.sandbox_id, BIND, victim.host_ip, user="root")
    assert "BOUND" not in out, out


def test_a_connection_flood_by_user_does_not_lock_the_agent_out(agent: AgentProcess) -> None:
    """`nobody` opens more connections to the guest port than the guest may hold files (4096), half
    of them stopping one byte short of a secret, and keeps them: the agent must still be served,
    and the guest must not be holding them all."""
    with gvisor_sandbox(agent) as r:
        sb = r.sandbox_id
        flood = f"python3 -c {shlex.quote(FLOOD)} 6000 4 > /dev/null 2>&1 &"
        agent.exec(sb, "/bin/sh", "-c", flood, user="nobody")
        # Each process's count on a line of its own (a shell: no python start per look).
        count = "for f in /tmp/flood.*; do [ -f $f ] && cat $f; echo; done"
        held, deadline = 0, time.monotonic() + 600
        while held < 4500 and time.monotonic() < deadline:  # the agent is served all along
            out = agent.exec(sb, "/bin/sh", "-c", count, timeout_sec=30).stdout.split()
            held = sum(int(n) for n in out if n.isdigit())
            time.sleep(0.2)
        assert held >= 4500, held
        assert guest_serves(agent, sb)
        fds = run(agent, sb, "import os; print(len(os.listdir('/proc/1/fd')))", user="root")
        assert int(fds) < 1024, (fds, held)


def test_nothing_of_the_secret_is_in_the_bundle_the_guest_sees(
    agent: AgentProcess, victim: pb.CreateSandboxResponse
) -> None:
    """The OCI config and record live outside the rootfs; the sandbox's mounts name no host file
    that holds the secret."""
    secret = secret_of(agent, victim.sandbox_id)
    sb_dir = agent.data_dir / "sandboxes" / victim.sandbox_id
    assert secret not in (sb_dir / "config.json").read_text()
    mounts = run(agent, victim.sandbox_id, "print(open('/proc/self/mountinfo').read())")
    assert str(sb_dir / "config.json") not in mounts and "record.json" not in mounts
    assert Path(sb_dir / "run" / "secret").stat().st_mode & 0o077 == 0
