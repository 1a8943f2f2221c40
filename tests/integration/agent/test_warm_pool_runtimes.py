"""Warm pools keyed by template and runtime (issue 17, session 13; docs/agent.md "Warm pools"): an
agent on its default runtime (``--runtime auto``: crun on this machine) keeps ``minimal`` pools of
crun and of runc side by side; a create claims from the pool of its own runtime only.

A claimed sandbox is recognised by its entry in the agent's container-id map; which runtime runs
it, by that runtime's own state directory (``crun --root <data>/crun list``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.integration.agent.test_warm_pool import container_of, destroy, wait_for
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


def _ready(agent: AgentProcess) -> dict[str, int]:
    """Each pool's ready members: removing a pool that does not exist answers every pool's state."""
    r = agent.stub.SetWarmPool(pb.SetWarmPoolRequest(template="no-such-pool", size=0), timeout=120)
    return {p.template: p.ready for p in r.pools}


def _listed_by(agent: AgentProcess, runtime: str) -> set[str]:
    """The containers ``runtime`` itself lists in the agent's state directory for it."""
    out = subprocess.run(
        [runtime, "--root", str(agent.data_dir / runtime), "list", "-q"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def both(agent_root: Path) -> Iterator[AgentProcess]:
    """An agent on its default runtime (no --runtime: crun here) with a pool of each runtime."""
    env = {"WARREN_AGENT_WARM_POOL": "minimal@runc=1"}
    a = AgentProcess(agent_root / "rt" / "data", agent_root / "rt" / "agent.log", runtime=None, env=env)
    a.start()
    try:
        yield a
    finally:
        a.finish()


def test_a_create_claims_from_the_pool_of_its_runtime(both: AgentProcess) -> None:
    # A create of the default runtime while only a runc pool exists: cold, no runc member taken.
    wait_for("the runc pool ready", lambda: _ready(both).get("minimal@runc") == 1)
    cold = both.create()
    try:
        assert container_of(both, cold.sandbox_id) is None
        assert cold.sandbox_id in _listed_by(both, "crun")
        assert _ready(both)["minimal@runc"] == 1
    finally:
        destroy(both, cold)
    # The default runtime's pool ("minimal", set as the CP sets it) next to the runc one.
    both.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal", size=1), timeout=120)
    wait_for("both pools ready", lambda: _ready(both) == {"minimal": 1, "minimal@runc": 1})
    default = both.create()  # no runtime named: the agent's default, crun
    explicit = both.create(runtime="runc")
    try:
        cid = container_of(both, default.sandbox_id)
        assert cid is not None and cid in _listed_by(both, "crun") and cid not in _listed_by(both, "runc")
        runc_cid = container_of(both, explicit.sandbox_id)
        assert runc_cid is not None and runc_cid in _listed_by(both, "runc")
        assert runc_cid not in _listed_by(both, "crun")
        infos = both.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
        listed = {s.sandbox_id: s.runtime for s in infos}
        assert listed == {default.sandbox_id: "crun", explicit.sandbox_id: "runc"}
        assert both.exec(explicit.sandbox_id, "true").exit_code == 0
        assert both.exec(default.sandbox_id, "true").exit_code == 0
    finally:
        destroy(both, default)
        destroy(both, explicit)
    # Named explicitly, the default runtime's pool is another name for the same sandboxes:
    # "minimal@crun" is its own pool, and either serves a create of crun.
    both.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal", size=0), timeout=120)
    both.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal@crun", size=1), timeout=120)
    wait_for("the crun pool ready", lambda: _ready(both).get("minimal@crun") == 1)
    named = both.create(runtime="crun")
    try:
        assert container_of(both, named.sandbox_id) is not None
        assert _ready(both).get("minimal@runc") == 1  # untouched
    finally:
        destroy(both, named)
        both.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal@crun", size=0), timeout=120)


def test_bad_pool_runtimes_are_refused(both: AgentProcess) -> None:
    for name, says in (
        ("minimal@kata", "unknown runtime 'kata'"),
        ("minimal@gvisor", "gVisor sandboxes are not pooled"),
        ("minimal@", "unknown runtime ''"),
        ("python@crun", "needs its chain"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            both.stub.SetWarmPool(pb.SetWarmPoolRequest(template=name, size=1), timeout=120)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert says in (e.value.details() or ""), (name, e.value.details())


def test_a_flag_naming_a_runtime_the_host_lacks_stops_the_agent(agent_root: Path, tmp_path: Path) -> None:
    """crun hidden from the agent (a PATH of every host program but crun): ``minimal@crun`` in
    its pools stops it at start, naming the setting and what the host offers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for p in Path(d).iterdir() if Path(d).is_dir() else ():
            if p.name != "crun" and not (bin_dir / p.name).exists():
                (bin_dir / p.name).symlink_to(p)
    root = agent_root / "lacks"
    env = {"PATH": str(bin_dir), "WARREN_AGENT_WARM_POOL": "minimal@crun=1"}
    agent = AgentProcess(root / "data", root / "agent.log", runtime="runc", env=env)
    proc = subprocess.run(
        agent.command(), env=agent.environment(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    said = proc.stderr
    assert "invalid --warm-pool / WARREN_AGENT_WARM_POOL: warm pool 'minimal@crun'" in said, said
    assert "runtime not available on this host 'crun' (this host offers: runc" in proc.stderr, proc.stderr
