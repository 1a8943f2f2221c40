"""Warm pools (issue 17, docs/agent.md "Warm pools"): a create that matches a pool claims a
ready sandbox, which becomes the requested one in every respect; pooled sandboxes are nobody's.

A claimed sandbox is recognised by its entry in the agent's container-id map (its container keeps
the member's ``wp-`` name); a cold one has none.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import netns
from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.harness.machine import free_port
from tests.integration.agent.layer_tars import layer_tar, put_layer
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# A claim changes the member's 1 vCPU when the host has more.
VCPUS = 2 if (os.cpu_count() or 1) > 1 else 1
# Filling a pool builds sandboxes one at a time, after any create: slow on a loaded machine.
FILL_TIMEOUT_S = 240.0
PEER = "198.51.100.82"  # the fake internet server (TEST-NET-2)
PROBE = """
import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except OSError as e:
    print("blocked", type(e).__name__)
"""


def wait_for(what: str, cond: Callable[[], bool], timeout: float = FILL_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def set_pool(agent: AgentProcess, size: int) -> pb.SetWarmPoolResponse:
    return agent.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal", size=size), timeout=120)


def ready(agent: AgentProcess) -> int:
    """Members ready now: removing a pool that does not exist changes nothing and answers
    every pool's state."""
    r = agent.stub.SetWarmPool(pb.SetWarmPoolRequest(template="no-such-pool", size=0), timeout=60)
    return sum(p.ready for p in r.pools if p.template == "minimal")


def fill(agent: AgentProcess, size: int) -> None:
    set_pool(agent, size)
    wait_for(f"{size} ready", lambda: ready(agent) == size)


def container_of(agent: AgentProcess, sb_id: str) -> str | None:
    """The claimed member's container id (None: a cold create)."""
    p = agent.data_dir / "container-ids" / sb_id
    return p.read_text().strip() if p.exists() else None


def members(agent: AgentProcess) -> set[str]:
    warm = agent.data_dir / "warm"
    return {d.name for d in warm.iterdir()} if warm.exists() else set()


def containers(agent: AgentProcess) -> set[str]:
    root = agent.data_dir / (agent.runtime or "runc")
    return {d.name for d in root.iterdir() if d.is_dir()} if root.exists() else set()


def destroy(agent: AgentProcess, r: pb.CreateSandboxResponse) -> None:
    cid = container_of(agent, r.sandbox_id)
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
    if cid is not None:  # its cgroups and processes go by the container's name
        assert wait_no_leaks(agent, cid, r.host_ip) == []
        assert container_of(agent, r.sandbox_id) is None


@pytest.fixture(scope="module")
def pooled(agent_root: Path) -> Iterator[AgentProcess]:
    """An agent with a `minimal` pool of 2 from the start (WARREN_AGENT_WARM_POOL)."""
    a = AgentProcess.standalone(agent_root / "warm", env={"WARREN_AGENT_WARM_POOL": "minimal=2"}).start()
    try:
        yield a
    finally:
        a.finish()  # destroys the members too
        assert members(a) == set()


@pytest.fixture(scope="module")
def fake_internet() -> Iterator[str]:
    """A "remote" server's address (not a private range)."""
    with netns.fake_internet("198.51.100.81", PEER):
        yield PEER


def test_pool_fills_from_the_setting_and_is_invisible(pooled: AgentProcess) -> None:
    wait_for("the pool of 2", lambda: ready(pooled) == 2)
    assert len(members(pooled)) == 2
    listed = pooled.stub.ListSandboxes(pb.ListSandboxesRequest())
    assert list(listed.sandboxes) == [] and list(listed.creating_sandbox_ids) == []
    # running under their own names, in no sandbox's place
    assert members(pooled) <= containers(pooled)
    assert not list((pooled.data_dir / "sandboxes").iterdir())


def test_claimed_sandbox_has_its_own_identity_and_limits(pooled: AgentProcess) -> None:
    fill(pooled, 2)
    r = pooled.create(memory_mb=256, vcpus=VCPUS, env={"WHO": "me"}, disk_size_mb=100)
    try:
        cid = container_of(pooled, r.sandbox_id)
        assert cid is not None and cid.startswith("wp-")
        out = pooled.exec(
            r.sandbox_id,
            "sh",
            "-c",
            'hostname; cat /etc/hostname; echo "$WHO $HOSTNAME"; grep -c "$(hostname)" /etc/hosts',
        )
        assert out.stdout.decode().split("\n")[:4] == [r.sandbox_id, r.sandbox_id, f"me {r.sandbox_id}", "1"]
        assert cid.encode() not in pooled.exec(r.sandbox_id, "env").stdout
        mem = Path(f"/sys/fs/cgroup/memory/warren/{cid}/memory.limit_in_bytes").read_text()
        assert int(mem) == 256 << 20
        quota = Path(f"/sys/fs/cgroup/cpu/warren/{cid}/cpu.cfs_quota_us").read_text()
        assert int(quota) == VCPUS * 100_000
        # the disk is the size a cold create makes (capped to fit the memory), and is reported
        assert r.disk_size_mb == 100
        df = pooled.exec(r.sandbox_id, "df", "-m", "/").stdout.decode().splitlines()[1].split()
        assert int(df[1]) == 100
        # listed like any sandbox, with its record under its own name
        (info,) = pooled.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
        assert (info.sandbox_id, info.memory_mb, info.vcpus, info.status) == (
            r.sandbox_id,
            256,
            VCPUS,
            "running",
        )
        assert (pooled.data_dir / "sandboxes" / r.sandbox_id / "record.json").exists()
        # pause and resume work on the claimed container
        pooled.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=r.sandbox_id))
        pooled.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=r.sandbox_id, timeout_sec=-1))
        assert pooled.exec(r.sandbox_id, "true").exit_code == 0
    finally:
        destroy(pooled, r)


def test_internet_false_holds_on_a_claimed_sandbox(pooled: AgentProcess, fake_internet: str) -> None:
    fill(pooled, 2)
    on = pooled.create(memory_mb=128)
    off = pooled.create(memory_mb=128, internet=False)
    try:
        assert container_of(pooled, on.sandbox_id) and container_of(pooled, off.sandbox_id)
        # the control: a claimed sandbox with internet reaches the server
        reaches = lambda: pooled.py(on.sandbox_id, PROBE, fake_internet, "8080").stdout == b"open\n"  # noqa: E731
        wait_for("the server from a sandbox with internet", reaches, 60)
        assert pooled.py(off.sandbox_id, PROBE, fake_internet, "8080").stdout.startswith(b"blocked")
        (info,) = [
            s
            for s in pooled.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
            if s.sandbox_id == off.sandbox_id
        ]
        assert info.internet is False
    finally:
        destroy(pooled, on)
        destroy(pooled, off)


def test_nothing_passes_from_one_claim_to_the_next(pooled: AgentProcess) -> None:
    fill(pooled, 1)
    first = pooled.create(memory_mb=128)
    assert container_of(pooled, first.sandbox_id) is not None
    secret = uuid.uuid4().hex
    pooled.exec(
        first.sandbox_id,
        "sh",
        "-c",
        f"echo {secret} > /root/s; echo {secret} > /tmp/s; echo {secret} > /dev/shm/s",
    )
    destroy(pooled, first)
    seen: list[str] = []
    for _ in range(3):  # whichever member or slot the next claims
        wait_for("a refilled member", lambda: ready(pooled) >= 1)
        nxt = pooled.create(memory_mb=128)
        try:
            assert container_of(pooled, nxt.sandbox_id) is not None
            found = pooled.exec(
                nxt.sandbox_id, "sh", "-c", f"grep -rl {secret} /root /tmp /dev/shm /etc; true"
            )
            seen.append(found.stdout.decode())
        finally:
            destroy(pooled, nxt)
    assert seen == ["", "", ""]


def test_burst_larger_than_the_pool_falls_back_to_cold(pooled: AgentProcess) -> None:
    fill(pooled, 2)
    log_before = len(pooled.log_path.read_text())
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        made = list(ex.map(lambda _: pooled.create(memory_mb=64), range(6)))
    try:
        assert len({m.sandbox_id for m in made}) == 6
        claimed = [m for m in made if container_of(pooled, m.sandbox_id) is not None]
        # The pool's two at least (a refill may slip in between creates that do not overlap);
        # the others were cold creates, each logged with its reason.
        assert 2 <= len(claimed) < 6
        cold_logged = pooled.log_path.read_text()[log_before:].count("event=create_cold")
        assert cold_logged == 6 - len(claimed)
        for m in made:
            assert pooled.exec(m.sandbox_id, "hostname").stdout.strip() == m.sandbox_id.encode()
    finally:
        for m in made:
            destroy(pooled, m)


def test_set_warm_pool_grows_shrinks_and_removes(pooled: AgentProcess) -> None:
    fill(pooled, 3)
    assert len(members(pooled)) == 3
    before = members(pooled)
    r = set_pool(pooled, 1)  # shrinking destroys the surplus at once
    assert [(p.template, p.target, p.ready) for p in r.pools] == [("minimal", 1, 1)]
    assert len(members(pooled)) == 1 and members(pooled) <= before
    gone = before - members(pooled)
    wait_for("the surplus containers gone", lambda: not gone & containers(pooled), 60)
    r = set_pool(pooled, 0)
    assert list(r.pools) == []
    assert members(pooled) == set()
    # a shape no pool holds takes the cold path
    cold = pooled.create(memory_mb=64)
    try:
        assert container_of(pooled, cold.sandbox_id) is None
    finally:
        destroy(pooled, cold)
    fill(pooled, 2)


def test_a_pool_of_a_chain_template(pooled: AgentProcess) -> None:
    """A template of layers: its members run the chain; the claim gets the request's env over
    the template's, and the start and ready commands run at the claim, with that env."""
    app = put_layer(pooled.stub, layer_tar({"srv/app/index.html": b"pooled\n"}, dirs=("srv", "srv/app")))
    cfg = pb.TemplateConfig(
        env={"TPL": "template", "BOTH": "template"}, workdir="/srv/app",
        start_cmd='echo "$BOTH $HOSTNAME" > /tmp/started', ready_cmd="test -s /tmp/started",
    )  # fmt: skip
    chain = pb.TemplateChain(base="minimal", layers=[app], config=cfg)
    pooled.stub.SetWarmPool(pb.SetWarmPoolRequest(template="acme/app", size=1, chain=chain), timeout=120)

    def app_ready() -> int:
        r = pooled.stub.SetWarmPool(pb.SetWarmPoolRequest(template="no-such-pool", size=0), timeout=60)
        return sum(p.ready for p in r.pools if p.template == "acme/app")

    made: list[pb.CreateSandboxResponse] = []
    try:
        wait_for("the app pool", lambda: app_ready() == 1)
        r = pooled.create(memory_mb=128, env={"BOTH": "request"}, chain=chain)
        made.append(r)
        assert container_of(pooled, r.sandbox_id) is not None
        out = pooled.exec(
            r.sandbox_id, "sh", "-c", 'pwd; echo "$TPL $BOTH"; cat index.html; cat /tmp/started'
        )
        assert out.stdout.decode().splitlines() == [
            "/srv/app",
            "template request",
            "pooled",
            f"request {r.sandbox_id}",
        ]
        # the same layers with another config are another template: cold
        other = pb.TemplateChain(base="minimal", layers=[app], config=pb.TemplateConfig(workdir="/srv"))
        made.append(pooled.create(memory_mb=128, chain=other))
        assert container_of(pooled, made[-1].sandbox_id) is None
    finally:
        pooled.stub.SetWarmPool(pb.SetWarmPoolRequest(template="acme/app", size=0), timeout=120)
        for m in made:
            destroy(pooled, m)


def test_set_warm_pool_checks_its_request(pooled: AgentProcess) -> None:
    import grpc

    for req in (
        pb.SetWarmPoolRequest(template="minimal", size=-1),
        pb.SetWarmPoolRequest(template="minimal", size=100_000),
        pb.SetWarmPoolRequest(template="../x", size=1),
        pb.SetWarmPoolRequest(template="python", size=1),  # not minimal: needs its chain
    ):
        with pytest.raises(grpc.RpcError) as e:
            pooled.stub.SetWarmPool(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    chain = pb.TemplateChain(base="minimal", layers=["ab" * 32])
    with pytest.raises(grpc.RpcError) as e:
        pooled.stub.SetWarmPool(pb.SetWarmPoolRequest(template="python", size=1, chain=chain))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "missing layers" in (
        e.value.details() or ""
    )


def test_pause_all_clears_the_pool(pooled: AgentProcess) -> None:
    fill(pooled, 2)
    was = members(pooled)
    pooled.stub.PauseAll(pb.PauseAllRequest())
    assert members(pooled) == set()
    wait_for("the members' containers gone", lambda: not was & containers(pooled), 60)
    # refills wait until the control plane is heard from again: a create, or SetWarmPool
    r = pooled.create(memory_mb=64)
    try:
        assert container_of(pooled, r.sandbox_id) is None
        wait_for("the pool refilled", lambda: ready(pooled) == 2)
    finally:
        destroy(pooled, r)


def test_crash_rebuilds_the_pool_and_keeps_claimed_sandboxes(agent_root: Path) -> None:
    a = AgentProcess.standalone(agent_root / "crash", env={"WARREN_AGENT_WARM_POOL": "minimal=2"}).start()
    try:
        wait_for("the pool of 2", lambda: ready(a) == 2)
        claimed = a.create(memory_mb=128)
        cid = container_of(a, claimed.sandbox_id)
        assert cid is not None
        a.exec(claimed.sandbox_id, "sh", "-c", "echo kept > /root/f")
        wait_for("the pool refilled", lambda: ready(a) == 2)
        old = members(a)
        a.kill9()
        a.start()
        # the old members are gone, never adopted; the pool is rebuilt with new ones
        listed = a.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
        assert [s.sandbox_id for s in listed] == [claimed.sandbox_id]
        assert not old & containers(a) and not old & members(a)
        wait_for("the pool rebuilt", lambda: ready(a) == 2)
        assert not old & members(a)
        # the claimed sandbox was re-adopted under its own name, on its member's container
        assert container_of(a, claimed.sandbox_id) == cid
        assert a.exec(claimed.sandbox_id, "cat", "/root/f").stdout == b"kept\n"
        destroy(a, claimed)
    finally:
        a.finish()
    assert members(a) == set()


def test_terminate_destroys_the_pool(agent_root: Path) -> None:
    a = AgentProcess.standalone(agent_root / "terminate", env={"WARREN_AGENT_WARM_POOL": "minimal=2"}).start()
    wait_for("the pool of 2", lambda: ready(a) == 2)
    was = members(a)
    a.stub.Terminate(pb.TerminateRequest())
    assert a.proc is not None and a.proc.wait(90) == 0
    assert members(a) == set()
    assert not was & containers(a)
    with open("/proc/self/mountinfo") as f:
        assert [line for line in f if str(a.data_dir / "warm") in line] == []


def test_metrics_show_pools_claims_and_cold_creates(agent_root: Path) -> None:
    port = free_port()
    env = {"WARREN_AGENT_WARM_POOL": "minimal=1", "WARREN_AGENT_METRICS_LISTEN": f"127.0.0.1:{port}"}
    a = AgentProcess.standalone(agent_root / "metered", env=env).start()

    def value(name: str, **labels: str) -> float | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        hits = [
            s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip
        return sum(hits) if hits else None

    made: list[pb.CreateSandboxResponse] = []
    try:
        wait_for("the pool of 1", lambda: ready(a) == 1)
        assert value("warren_agent_warm_pool_target", template="minimal") == 1
        assert value("warren_agent_warm_pool_ready", template="minimal") == 1
        assert value("warren_agent_warm_pool_claims_total") == 0
        made.append(a.create(memory_mb=64))
        assert container_of(a, made[-1].sandbox_id) is not None
        assert value("warren_agent_warm_pool_claims_total") == 1
        set_pool(a, 0)  # no pool left: the next create is cold, for want of one
        made.append(a.create(memory_mb=64))
        assert value("warren_agent_cold_creates_total", reason="no_pool") == 1
        assert value("warren_agent_warm_pool_target", template="minimal") is None
    finally:
        for m in made:
            destroy(a, m)
        a.stop()
