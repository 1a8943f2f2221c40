"""The gVisor tier over the agent's gRPC API (docs/agent.md, "gVisor"): a real agent, real runsc.

Sandboxes are shared across the module where a test only reads them (the first one serves the
exec, files, limits and re-adoption tests); each test that changes a sandbox's state makes its
own. Every sandbox is destroyed and checked for leftovers at the end. Sandboxes a test needs at
once are made (and destroyed) side by side: a gVisor create mostly waits.
"""

from __future__ import annotations

import glob
import os
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness import netns
from tests.harness.agent import AgentProcess
from tests.harness.leaks import runsc_leftovers, wait_no_leaks
from warren.agent.runtime.gvisor import MEMORY_HEADROOM
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

TEAM = str(uuid.uuid4())
# Written by rename, so a reader never sees the file truncated and not yet rewritten.
COUNTER = (
    "import os, time\ni = 0\nwhile True:\n"
    "    open('/tmp/counter.new', 'w').write(str(i)); os.replace('/tmp/counter.new', '/tmp/counter')\n"
    "    i += 1; time.sleep(0.01)\n"
)
KILL_COUNTER = (
    "import os\nfor p in os.listdir('/proc'):\n"
    "    if p.isdigit() and b'counter.new' in open(f'/proc/{p}/cmdline', 'rb').read():\n"
    "        os.kill(int(p), 9)\n"
)
# A "remote" server behind its own veth (as in test_isolation.py, under other names so the two
# modules can run at once): no packet leaves the machine.
INET_HOST, INET_PEER = "203.0.113.85", "203.0.113.86"


def code_of(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()  # type: ignore[attr-defined, no-any-return]


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def destroy_clean(agent: AgentProcess, r: pb.CreateSandboxResponse, *, gone_ok: bool = False) -> None:
    try:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
    except grpc.RpcError as e:
        if not (gone_ok and code_of(e) == grpc.StatusCode.NOT_FOUND):
            raise
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
    assert (
        wait_for("runsc to leave nothing", lambda: runsc_leftovers(agent.data_dir, r.sandbox_id) == [])
        is True
    )


def side_by_side(*calls: Callable[[], Any]) -> list[Any]:
    """Each of ``calls`` in a thread of its own, all waited for: their results, in order (the
    first exception raised, once all have ended)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(c) for c in calls]
    return [f.result() for f in futures]


def create_both(agent: AgentProcess, **kw: Any) -> list[pb.CreateSandboxResponse]:
    """Two sandboxes created side by side, both with ``kw`` but for the second's own fields
    (``second_<field>``); one that was made while the other failed is destroyed."""
    second = {k.removeprefix("second_"): v for k, v in kw.items() if k.startswith("second_")}
    first = {k: v for k, v in kw.items() if not k.startswith("second_")}
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(agent.create, **first), pool.submit(agent.create, **{**first, **second})]
    made = [f.result() for f in futures if f.exception() is None]
    if len(made) < 2:
        destroy_all(agent, *made)
        for f in futures:
            f.result()
    return made


def destroy_all(agent: AgentProcess, *rs: pb.CreateSandboxResponse) -> None:
    side_by_side(*(lambda r=r: destroy_clean(agent, r) for r in rs))


def info(agent: AgentProcess, sb_id: str) -> pb.SandboxInfo:
    found = [
        s for s in agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes if s.sandbox_id == sb_id
    ]
    assert len(found) == 1, sb_id
    return found[0]


def counter(agent: AgentProcess, sb_id: str) -> int:
    res = agent.exec(sb_id, "cat", "/tmp/counter")
    assert res.exit_code == 0, res.stderr
    return int(res.stdout)


def start_counter(agent: AgentProcess, sb_id: str) -> int:
    """A background Python counter; returns once it has counted past 200 (a counter started
    again from zero could not be mistaken for one that went on)."""
    agent.exec(sb_id, "/bin/sh", "-c", f"python3 -c {shlex.quote(COUNTER)} >/dev/null 2>&1 &")
    wait_for("the counter", lambda: agent.exec(sb_id, "cat", "/tmp/counter").stdout.strip().isdigit())
    return wait_for("the counter to pass 200", lambda: (v := counter(agent, sb_id)) > 200 and v)


def sandbox_memory(agent: AgentProcess, sb_id: str) -> int:
    """The host memory of a sandbox: its cgroup's usage (gone: 0), the resident memory of every
    runsc process serving it (the gofer is outside the cgroup) and its disk tmpfs."""
    st = os.statvfs(agent.data_dir / "sandboxes" / sb_id / "disk")
    total = (st.f_blocks - st.f_bfree) * st.f_frsize
    with_cg = glob.glob(f"/sys/fs/cgroup/memory/warren/{sb_id}/memory.usage_in_bytes")
    for p in with_cg:
        total += int(Path(p).read_text())
    for status in glob.glob("/proc/[0-9]*/status"):
        pid = status.split("/")[2]
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"runsc-gofer" not in cmd or sb_id.encode() not in cmd:
                continue
            for line in Path(status).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


@pytest.fixture(scope="module")
def first(agent: AgentProcess) -> Iterator[pb.CreateSandboxResponse]:
    r = agent.create(memory_mb=256, runtime="gvisor")
    yield r
    destroy_clean(agent, r)


def test_uname_exec_files_and_listing(agent: AgentProcess, first: pb.CreateSandboxResponse) -> None:
    sb = first.sandbox_id
    assert info(agent, sb).runtime == "gvisor"
    inside = agent.exec(sb, "uname", "-r").stdout.decode().strip()
    assert inside and inside != os.uname().release  # gVisor's own kernel version
    res = agent.py(sb, "import sys; print(sys.stdin.read().upper()); sys.exit(3)", stdin=b"in")
    assert (res.stdout, res.exit_code) == (b"IN\n", 3)
    s = agent.stub
    s.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path="/data/empty", content=b""))
    s.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path="/data/one", content=b"\x00"))
    assert s.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path="/data/empty")).content == b""
    assert s.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path="/data/one")).content == b"\x00"
    big = os.urandom(20 * 1024 * 1024)

    def upload() -> Iterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(meta=pb.WriteFileMeta(sandbox_id=sb, path="/data/big.bin"))
        for i in range(0, len(big), 1 << 20):
            yield pb.WriteFileStreamRequest(chunk=big[i : i + (1 << 20)])

    assert s.WriteFileStream(upload(), timeout=120).bytes_written == len(big)
    got = b"".join(
        c.chunk
        for c in s.ReadFileStream(pb.ReadFileRequest(sandbox_id=sb, path="/data/big.bin"), timeout=120)
    )
    assert got == big


def test_the_guest_port_wants_the_secret(agent: AgentProcess, first: pb.CreateSandboxResponse) -> None:
    """The guest's TCP listener closes a connection that does not start with the secret."""
    import socket

    with socket.create_connection((first.host_ip, 49982), timeout=10) as c:
        c.sendall(b"0" * 64 + b"\x00\x00\x00\x11\x01" + b'{"op": "health"}')
        c.settimeout(10)
        assert c.recv(100) == b""  # closed without an answer


def test_unknown_runtime_is_refused(agent: AgentProcess) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        agent.create(memory_mb=128, runtime="firecracker")
    assert code_of(ei.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "firecracker" in ei.value.details()  # type: ignore[attr-defined, operator]


# An allocation loop as fast as Python goes, in a background process of its own.
HOG_LOOP = "b = []\nwhile True: b.append(bytearray(8 << 20))"
HOG_RUNNING = "test -d /proc/$(cat /tmp/hog.pid) && echo running || echo gone"


def test_a_memory_hog_is_killed_inside_and_its_sandbox_lives(
    agent: AgentProcess, first: pb.CreateSandboxResponse
) -> None:
    """gVisor's kernel has no OOM killer: the guest enforces the limit inside
    (guest_agent/memwatch.py) and the host's cgroup holds the limit plus a fixed headroom, so at
    the limit the hog gets SIGKILL, as on runc, and its sandbox and the neighbour go on."""
    hog = agent.create(memory_mb=128, runtime="gvisor")
    try:
        cg = Path(f"/sys/fs/cgroup/memory/warren/{hog.sandbox_id}")
        assert int((cg / "memory.limit_in_bytes").read_text()) == (128 << 20) + MEMORY_HEADROOM
        res = agent.py(hog.sandbox_id, f"x = bytearray({256 << 20}); print('survived')", timeout_sec=60)
        assert res.exit_code in (-9, 137) and b"survived" not in res.stdout, res
        # A command started while the victim's memory is still counted in use may be the watch's
        # next victim, as under Linux's OOM killer (CI, session 22: the shell below got SIGKILL).
        wait_for("a command to run again", lambda: agent.exec(hog.sandbox_id, "echo", "ok").stdout == b"ok\n")
        started = agent.exec(
            hog.sandbox_id, "/bin/sh", "-c",
            f"python3 -c {shlex.quote(HOG_LOOP)} >/dev/null 2>&1 & echo $! > /tmp/hog.pid",
        )  # fmt: skip
        assert started.exit_code == 0, started
        wait_for(
            "the background hog to be killed",
            lambda: agent.exec(hog.sandbox_id, "/bin/sh", "-c", HOG_RUNNING).stdout == b"gone\n",
        )
        assert agent.exec(hog.sandbox_id, "echo", "alive").stdout == b"alive\n"
        assert info(agent, hog.sandbox_id).status == "running"
    finally:
        destroy_clean(agent, hog)
    assert agent.exec(first.sandbox_id, "echo", "alive").stdout == b"alive\n"


@pytest.fixture(scope="module")
def fake_internet() -> Iterator[str]:
    with netns.fake_internet(INET_HOST, INET_PEER) as url:
        yield url


def test_internet_on_and_off(agent: AgentProcess, fake_internet: str) -> None:
    fetch = (
        "import urllib.request, sys; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)"
    )
    on, off = create_both(agent, memory_mb=128, runtime="gvisor", second_internet=False)
    try:
        got = agent.py(on.sandbox_id, fetch, fake_internet, "30")
        assert got.stdout == b"200\n", got.stderr
        res = agent.py(off.sandbox_id, fetch, fake_internet, "3")
        assert res.exit_code != 0 and res.stdout == b""
    finally:
        destroy_all(agent, on, off)


@pytest.fixture(scope="module")
def paused(agent: AgentProcess) -> Iterator[tuple[pb.CreateSandboxResponse, int]]:
    """A sandbox paused to disk with a counter that had reached the returned value."""
    r = agent.create(memory_mb=256, runtime="gvisor")
    try:
        reached = start_counter(agent, r.sandbox_id)
        before = sandbox_memory(agent, r.sandbox_id)
        resp = agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
        assert resp.paused_state == "disk"
        after = sandbox_memory(agent, r.sandbox_id)
        assert before > 0 and after <= before * 0.2, (before, after)
        yield r, reached
    finally:
        destroy_clean(agent, r)


def test_pause_to_disk_frees_memory_and_resume_continues(
    agent: AgentProcess, paused: tuple[pb.CreateSandboxResponse, int]
) -> None:
    r, reached = paused
    sb = r.sandbox_id
    i = info(agent, sb)
    assert (i.status, i.paused_state) == ("paused", "disk")
    with pytest.raises(grpc.RpcError) as ei:
        agent.exec(sb, "true")
    assert code_of(ei.value) == grpc.StatusCode.FAILED_PRECONDITION
    agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sb), timeout=120)
    assert info(agent, sb).paused_state == ""
    first_read = counter(agent, sb)
    assert first_read >= reached  # went on from its value: a restarted one would be far lower
    wait_for("the counter to move on", lambda: counter(agent, sb) > first_read)
    # Paused again for the re-adoption test below.
    assert agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sb), timeout=120).paused_state == "disk"


def test_memory_snapshot_forks_continue_independently(agent: AgentProcess) -> None:
    src = agent.create(memory_mb=256, runtime="gvisor")
    tpl = str(uuid.uuid4())
    forks: list[pb.CreateSandboxResponse] = []
    try:
        at_snapshot = start_counter(agent, src.sandbox_id)
        snap = agent.stub.CreateSnapshot(
            pb.CreateSnapshotRequest(sandbox_id=src.sandbox_id, team_id=TEAM, template_id=tpl), timeout=120
        )
        assert snap.kind == "memory"
        forks.extend(create_both(agent, memory_mb=256, team_id=TEAM, template_id=tpl))
        assert len({f.sandbox_id for f in forks}) == 2 and len({f.host_ip for f in forks}) == 2
        for f in forks:
            assert info(agent, f.sandbox_id).runtime == "gvisor"
            assert counter(agent, f.sandbox_id) >= at_snapshot
            names = agent.exec(f.sandbox_id, "/bin/sh", "-c", "cat /etc/hostname; echo $HOSTNAME").stdout
            assert names.decode().split() == [f.sandbox_id, f.sandbox_id]
        # Independent: stopping one's counter leaves the other's running.
        agent.py(forks[0].sandbox_id, KILL_COUNTER)
        stopped = counter(agent, forks[0].sandbox_id)
        other = counter(agent, forks[1].sandbox_id)
        wait_for("the second fork to count on", lambda: counter(agent, forks[1].sandbox_id) > other + 10)
        assert counter(agent, forks[0].sandbox_id) in (stopped, stopped + 1)
        agent.stub.DeleteSnapshot(pb.DeleteSnapshotRequest(team_id=TEAM, template_id=tpl))
        assert agent.exec(forks[1].sandbox_id, "echo", "ok").stdout == b"ok\n"
    finally:
        destroy_all(agent, *forks, src)


def test_kill9_readoption_of_running_and_disk_paused(
    agent: AgentProcess, first: pb.CreateSandboxResponse, paused: tuple[pb.CreateSandboxResponse, int]
) -> None:
    agent.kill9()
    agent.start()
    p, _ = paused
    assert info(agent, first.sandbox_id).status == "running"
    assert agent.exec(first.sandbox_id, "echo", "back").stdout == b"back\n"
    i = info(agent, p.sandbox_id)
    assert (i.status, i.paused_state, i.runtime) == ("paused", "disk", "gvisor")
    agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=p.sandbox_id), timeout=120)
    before = counter(agent, p.sandbox_id)
    wait_for("the re-adopted counter to move on", lambda: counter(agent, p.sandbox_id) > before)


def test_a_corrupt_image_fails_the_resume_and_leaves_no_process(agent: AgentProcess) -> None:
    r = agent.create(memory_mb=128, runtime="gvisor")
    try:
        agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
        image = agent.data_dir / "sandboxes" / r.sandbox_id / "checkpoint" / "checkpoint.img"
        image.write_bytes(b"not an image")
        with pytest.raises(grpc.RpcError) as ei:
            agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
        assert code_of(ei.value) == grpc.StatusCode.INTERNAL and "restore" in ei.value.details()  # type: ignore[attr-defined, operator]
        assert (
            wait_for("no runsc process", lambda: runsc_leftovers(agent.data_dir, r.sandbox_id) == []) is True
        )
        assert info(agent, r.sandbox_id).status == "paused"
    finally:
        destroy_clean(agent, r)
