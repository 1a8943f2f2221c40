"""What a sandbox must not be able to do: see or touch the host and its neighbours."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness import netns
from tests.harness.agent import AgentProcess
from tests.harness.leaks import slot_of, wait_no_leaks
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): these tests only create and destroy
# sandboxes of their own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


# A "remote" server for the internet tests: our own netns behind its own veth, so no packet
# ever leaves this machine. At a documentation address (TEST-NET-3), which is not private:
# sandboxes may reach the public internet, never a private range.
INET_HOST, INET_PEER = "203.0.113.77", "203.0.113.78"

PROBE = """
import socket, sys
s = socket.socket(); s.settimeout(1.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except OSError as e:
    print("blocked", type(e).__name__)
"""


@pytest.fixture(scope="module")
def pair(agent: AgentProcess) -> Iterator[tuple[pb.CreateSandboxResponse, pb.CreateSandboxResponse]]:
    a = agent.create(memory_mb=128)
    b = agent.create(memory_mb=128)
    yield a, b
    for x in (a, b):
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=x.sandbox_id))
    for x in (a, b):
        assert wait_no_leaks(agent, x.sandbox_id, x.host_ip) == []


@pytest.fixture(scope="module")
def fake_internet() -> Iterator[str]:
    with netns.fake_internet(INET_HOST, INET_PEER) as url:
        yield url


def test_root_inside_is_an_unprivileged_uid_outside(agent: AgentProcess, pair: tuple) -> None:
    a, _ = pair
    res = agent.exec(a.sandbox_id, "cat", "/proc/self/uid_map")
    inner, base, size = (int(x) for x in res.stdout.split())
    # The slot's own range (templates.uid_base), past the canonical one the layers are stored in.
    assert (inner, size) == (0, 65536) and base > 1_000_000_000
    pid = int(agent.py(a.sandbox_id, "import os; print(os.getpid())").stdout)
    assert pid > 1  # own pid namespace
    guest_host_pid = int((agent.data_dir / "sandboxes" / a.sandbox_id / "init.pid").read_text())
    assert os.stat(f"/proc/{guest_host_pid}").st_uid == base


def test_cannot_see_host_processes_or_files(agent: AgentProcess, pair: tuple) -> None:
    a, _ = pair
    marker = Path(f"/tmp/warren-host-secret-{uuid.uuid4().hex}")
    marker.write_text("host secret")
    try:
        pids = agent.py(
            a.sandbox_id, "import os; print(' '.join(p for p in os.listdir('/proc') if p.isdigit()))"
        )
        visible = [int(p) for p in pids.stdout.split()]
        assert 1 in visible and len(visible) < 10, visible  # the guest, python, nothing of the host
        cmd1 = agent.exec(a.sandbox_id, "cat", "/proc/1/cmdline").stdout
        assert b"guest.py" in cmd1
        assert agent.exec(a.sandbox_id, "test", "-e", str(marker)).exit_code == 1
        assert agent.exec(a.sandbox_id, "hostname").stdout.strip() == a.sandbox_id.encode()
        # the host's /sys is not there; /proc's dangerous corners are masked
        assert agent.exec(a.sandbox_id, "ls", "/sys").stdout == b""
        assert agent.exec(a.sandbox_id, "cat", "/proc/kcore").stdout == b""
    finally:
        marker.unlink()


def test_cannot_see_other_sandboxes_files_or_network(agent: AgentProcess, pair: tuple) -> None:
    a, b = pair
    agent.exec(a.sandbox_id, "sh", "-c", "echo mine > /root/a-secret")
    assert agent.exec(b.sandbox_id, "test", "-e", "/root/a-secret").exit_code == 1
    # b serves on its own address; the host reaches it, a does not
    start = pb.ExecStart(sandbox_id=b.sandbox_id, cmd="python3", args=["-m", "http.server", "8000"],
                         tag="web", background=True)  # fmt: skip
    ev = agent.stub.ExecStream(iter([pb.ExecStreamRequest(start=start)]))
    next(ev)
    ev.cancel()
    deadline = time.monotonic() + 60  # python3 starting in the sandbox on a loaded machine
    while time.monotonic() < deadline:
        if (
            subprocess.run(["python3", "-c", PROBE, b.host_ip, "8000"], capture_output=True).stdout
            == b"open\n"
        ):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("host cannot reach the sandbox's server at host_ip")
    assert agent.py(a.sandbox_id, PROBE, b.host_ip, "8000").stdout.startswith(b"blocked")
    # nor the host itself through its gateway (the agent, databases...)
    gw = agent.exec(a.sandbox_id, "sh", "-c", "ip route 2>/dev/null || cat /proc/net/route").stdout
    assert gw  # routing exists
    gateway = a.host_ip.rsplit(".", 1)[0] + "." + str(int(a.host_ip.rsplit(".", 1)[1]) - 1)
    port = agent.address.rsplit(":", 1)[1]
    assert agent.py(a.sandbox_id, PROBE, gateway, port).stdout.startswith(b"blocked")


def test_internet_on_and_off(agent: AgentProcess, pair: tuple, fake_internet: str) -> None:
    a, _ = pair
    fetch = (
        "import urllib.request, sys; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)"
    )
    got = agent.py(a.sandbox_id, fetch, fake_internet, "30")  # an answer may be slow under load
    assert got.stdout == b"200\n", got.stderr
    off = agent.create(internet=False)
    try:
        res = agent.py(off.sandbox_id, fetch, fake_internet, "3")
        assert res.exit_code != 0 and res.stdout == b""
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=off.sandbox_id))
    assert wait_no_leaks(agent, off.sandbox_id, off.host_ip) == []


def test_ipv6_is_off_on_both_ends_of_the_link(agent: AgentProcess, pair: tuple) -> None:
    """D4: the veth kept IPv6 on, so sandbox and host shared a link-local link (tests/security/
    test_network.py attacks it); now neither end has an IPv6 address, whatever the slot."""
    for r in pair:
        slot = slot_of(r.host_ip)
        assert Path(f"/proc/sys/net/ipv6/conf/wv{slot}/disable_ipv6").read_text() == "1\n"
        inside = agent.exec(r.sandbox_id, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
        assert inside.stdout == b"1\n"
        # Only lo's ::1 is left inside (/proc/net/if_inet6: one line per address).
        addrs = agent.exec(r.sandbox_id, "cat", "/proc/net/if_inet6").stdout.decode().splitlines()
        assert [line.split()[-1] for line in addrs] == ["lo"], addrs
    v6 = subprocess.run(["ip6tables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
    assert "-A WARREN-IN -i wv+ -j DROP" in v6 and "-A WARREN-FWD -i wv+ -j DROP" in v6


def test_egress_allow_is_validated_installed_and_removed_with_the_slot(agent: AgentProcess) -> None:
    """CreateSandboxRequest.egress_allow: CIDRs or INVALID_ARGUMENT, one ACCEPT each in the
    host's WARREN-ALLOW chain, gone with the sandbox (tests/security/test_network.py checks
    what they open)."""
    for bad in (["garbage"], ["10.0.0.1/8"], ["fd00::/8"], [f"10.9.{i}.0/24" for i in range(65)]):
        with pytest.raises(grpc.RpcError) as ei:
            agent.create(egress_allow=bad)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad  # type: ignore[attr-defined]
    r = agent.create(memory_mb=128, egress_allow=["10.213.8.0/30", "192.168.213.0/30"])
    off = agent.create(memory_mb=128, internet=False, egress_allow=["10.213.8.0/30"])
    try:
        dump = subprocess.run(["iptables", "-w", "-S", "WARREN-ALLOW"], capture_output=True, text=True).stdout
        assert sorted(line for line in dump.splitlines() if f" -i wv{slot_of(r.host_ip)} " in line) == [
            f"-A WARREN-ALLOW -d 10.213.8.0/30 -i wv{slot_of(r.host_ip)} -j ACCEPT",
            f"-A WARREN-ALLOW -d 192.168.213.0/30 -i wv{slot_of(r.host_ip)} -j ACCEPT",
        ]
        assert f" -i wv{slot_of(off.host_ip)} " not in dump  # internet=false: nothing is opened
    finally:
        for x in (r, off):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=x.sandbox_id), timeout=60)
    for x in (r, off):
        assert wait_no_leaks(agent, x.sandbox_id, x.host_ip) == []


def test_root_cannot_mount_load_modules_or_write_proc_sys(agent: AgentProcess, pair: tuple) -> None:
    a, _ = pair
    sb = a.sandbox_id
    assert agent.exec(sb, "mount", "-t", "tmpfs", "none", "/mnt").exit_code != 0
    assert agent.exec(sb, "sh", "-c", "echo 1 > /proc/sys/kernel/sysrq").exit_code != 0
    assert agent.exec(sb, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward").exit_code != 0
    assert agent.exec(sb, "unshare", "-r", "-m", "true").exit_code != 0  # no nested namespaces
    syscalls = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
out = []
for name, nr, args in (("mount", 165, (b"none", b"/mnt", b"tmpfs", 0, None)),
                       ("finit_module", 313, (0, b"", 0)),
                       ("init_module", 175, (None, 0, b"")),
                       ("unshare", 272, (0x10000000,))):
    rc = libc.syscall(nr, *args)
    out.append(f"{name}={rc}:{ctypes.get_errno()}")
print(" ".join(out))
"""
    res = agent.py(sb, syscalls).stdout.decode().split()
    assert all(r.split("=")[1].startswith("-1:") for r in res), res


def test_memory_hog_is_killed_inside_its_sandbox_only(agent: AgentProcess, pair: tuple) -> None:
    a, b = pair  # 128 MB each
    res = agent.py(a.sandbox_id, "x = bytearray(400 * 1024 * 1024); print('survived')")
    assert res.exit_code in (-9, 137) and b"survived" not in res.stdout
    assert agent.exec(a.sandbox_id, "true").exit_code == 0  # its guest lives on
    assert agent.exec(b.sandbox_id, "true").exit_code == 0


def test_fork_bomb_hits_the_pids_limit_and_the_agent_stays_healthy(agent: AgentProcess) -> None:
    r = agent.create(memory_mb=512)
    # Children exec a tiny `sleep` at once, so the pids limit is hit long before memory runs out.
    bomb = """
import os
n = 0
try:
    while True:
        if os.fork() == 0:
            # Off the exec's pipes (which would hold its answer until they close), and none
            # exits (freeing its pid) before the limit is reached, however slow the machine.
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.execv("/bin/sleep", ["sleep", "3600"])
        n += 1
except OSError as e:
    print(n, e.errno)
"""
    try:
        res = agent.py(r.sandbox_id, bomb, timeout_sec=60)
        forked, errno = map(int, res.stdout.split())
        assert errno == 11 and 900 < forked < 1024  # EAGAIN at the pids limit (1024)
        # The agent still answers (how fast is the benchmarks' business, not a test's).
        listed = agent.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=60)
        assert r.sandbox_id in {x.sandbox_id for x in listed.sandboxes}
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip, timeout=60) == []


def test_file_paths_cannot_escape(agent: AgentProcess, pair: tuple) -> None:
    a, _ = pair
    sb = a.sandbox_id
    marker = Path(f"/tmp/warren-host-file-{uuid.uuid4().hex}")
    marker.write_text("host only")
    written = Path(f"/tmp/warren-escape-{uuid.uuid4().hex}")
    try:
        agent.exec(sb, "ln", "-sfn", "/../../../../../../..", "/tmp/up")
        agent.exec(sb, "ln", "-sfn", str(marker), "/tmp/direct")
        for path in (f"/../../../../..{marker}", f"/tmp/up{marker}", "/tmp/direct", f"../../..{marker}"):
            with pytest.raises(grpc.RpcError) as ei:
                agent.stub.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path=path))
            assert ei.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), path  # type: ignore[attr-defined]
        for path in (f"/tmp/up{written}", f"/../../..{written}"):
            with contextlib.suppress(grpc.RpcError):
                agent.stub.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path=path, content=b"x"))
            assert not written.exists()
        # the host's /etc/shadow is never what comes back for /etc/shadow
        inside = agent.stub.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path="/tmp/up/etc/hostname")).content
        assert inside.strip() == sb.encode()
    finally:
        marker.unlink()
        written.unlink(missing_ok=True)


def test_disk_cap(agent: AgentProcess) -> None:
    r = agent.create(memory_mb=256, disk_size_mb=16)
    try:
        res = agent.exec(r.sandbox_id, "sh", "-c", "dd if=/dev/zero of=/root/fill bs=1M count=40 2>&1")
        assert res.exit_code != 0 and b"No space left" in res.stdout
        assert agent.exec(r.sandbox_id, "rm", "/root/fill").exit_code == 0
        assert agent.exec(r.sandbox_id, "true").exit_code == 0
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id))


def test_guest_socket_swapped_for_a_symlink_does_not_redirect_the_agent(
    agent: AgentProcess, pair: tuple
) -> None:
    """Sandbox root owns /run/warren (the host dir holding its guest socket). Replacing the socket
    with a symlink to another sandbox's socket must not make the agent run this sandbox's
    commands in the other one: the agent never follows a symlink to reach a guest."""
    _, victim = pair
    evil = agent.create(memory_mb=128)
    try:
        victim_sock = agent.data_dir / "sandboxes" / victim.sandbox_id / "run" / "guest.sock"
        assert victim_sock.exists()
        swap = agent.exec(
            evil.sandbox_id, "sh", "-c",
            f"rm /run/warren/guest.sock && ln -s {victim_sock} /run/warren/guest.sock",
        )  # fmt: skip
        assert swap.exit_code == 0, swap.stderr
        with pytest.raises(grpc.RpcError) as ei:
            got = agent.exec(evil.sandbox_id, "hostname")
            raise AssertionError(f"exec went through the symlink to {got.stdout!r}")
        assert ei.value.code() != grpc.StatusCode.OK  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError):
            agent.stub.ReadFile(pb.ReadFileRequest(sandbox_id=evil.sandbox_id, path="/etc/hostname"))
        # the victim is untouched and still served
        assert agent.exec(victim.sandbox_id, "hostname").stdout.strip() == victim.sandbox_id.encode()
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=evil.sandbox_id), timeout=60)
    assert wait_no_leaks(agent, evil.sandbox_id, evil.host_ip) == []
