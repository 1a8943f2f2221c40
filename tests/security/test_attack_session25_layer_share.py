"""Session 25: a tenant's abandoned layer stream removed the same layer another tenant's stream had
delivered.

A snapshot export (and a build step's layer) is streamed to the control plane while the agent
installs it in its own cache; the stream's last message says it is installed here, and the CP
records the layer on this host for the snapshot's template. Since session 25 a stream whose
reader left (a cancelled build, a snapshot given up) has the layer removed once its install
ends, "only a layer this install created". Layers are named by their content: a tenant can
make the same layer as another (the same files, modes and times: an unchanged sandbox, an empty
step, or bytes it chose to match). Tenant A's stream starts first and installs the layer; tenant
B's stream of the same layer finds it there and ends well; then A's reader leaves, and A's
install "created" it: the layer was removed under B's recorded template. Before: after B's
export ended with the layer installed, A's cancel removed it (HasLayers: missing), and each of
B's creates on it had the CP push it again (up to ``WARREN_BUILD_MAX_LAYER_MB``).

Written as the control plane calls the agent. Fixed (agent/layer_abandon.py, used by
layer_cache.py ``stream_and_install``): the decision is per digest, once the last of its streams
has settled: removed only if one of their installs put it here and none ended well. Variant:
the layer found here by another tenant's ``HasLayers`` (its CP then records it on the host)
stays too; one tenant's two abandoned streams of one layer still leave nothing (the leak fix
holds).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.sandbox_fs import SandboxFs
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

LAYER_MB = 32  # past the stream's flow-control window: a reader that stops holds the stream open
SAME_TIME = 1_000_000_000
SETTLE_S = 90  # slack for a loaded CI: outcomes are waited for, never timed


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, "runc") as a:
        yield a


def _same_files(agent: AgentProcess, token: str) -> str:
    """A paused sandbox of a new team whose writable layer is exactly ``token``'s files."""
    sid = agent.create(owner_team_id=str(uuid.uuid4()), memory_mb=256, disk_size_mb=256).sandbox_id
    write = (
        f"{{ echo {token}; head -c {LAYER_MB}M /dev/zero; }} > /home/same"
        f" && touch -d @{SAME_TIME} /home/same /home"
    )
    assert agent.exec(sid, "/bin/sh", "-c", write).exit_code == 0
    agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sid), timeout=120)
    # What the runtime put in the layer (``/etc/hosts``'s mount point) bears the second the
    # sandbox was made: an attacker makes its sandbox in the victim's second. Here the two are
    # given one time instead, so that a loaded machine's second boundary cannot part them.
    upper = SandboxFs(agent.data_dir / "sandboxes" / sid).upper
    for p in (upper / "etc" / "hosts", upper / "etc", upper):
        if p.exists():
            os.utime(p, (SAME_TIME, SAME_TIME), follow_symlinks=False)
    return sid


def _log_since(agent: AgentProcess, offset: int) -> str:
    with open(agent.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _wait_log(agent: AgentProcess, offset: int, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + SETTLE_S
    while (m := re.search(pattern, _log_since(agent, offset))) is None:
        assert time.monotonic() < deadline, f"no {pattern!r} in the agent's log"
        time.sleep(0.05)
    return m


def _present(agent: AgentProcess, digest: str) -> bool:
    """On the host's disk (looked at, not asked: a ``HasLayers`` is a CP that records it)."""
    return (agent.data_dir / "layers" / digest).is_dir()


def _asked(agent: AgentProcess, digest: str) -> bool:
    """``HasLayers``, as a CP asks before it records the layer on the host."""
    has = agent.stub.HasLayers(pb.HasLayersRequest(digests=[digest]), timeout=30)
    return digest not in has.missing


def _first_chunk(agent: AgentProcess, sid: str) -> Any:
    """The export's call (to cancel), its first chunk read and no more."""
    call: Any = agent.stub.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=sid), timeout=300)
    assert next(call).HasField("chunk")
    return call


@contextlib.contextmanager
def _destroyed(agent: AgentProcess, *sids: str) -> Iterator[None]:
    try:
        yield
    finally:
        for sid in sids:
            with contextlib.suppress(grpc.RpcError):
                agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)


def test_an_abandoned_stream_keeps_a_layer_another_tenants_stream_delivered(agent: AgentProcess) -> None:
    token = uuid.uuid4().hex
    attacker, victim = _same_files(agent, token), _same_files(agent, token)
    with _destroyed(agent, attacker, victim):
        offset = agent.log_path.stat().st_size
        call = _first_chunk(agent, attacker)  # the attacker's install starts, and ends on its own
        digest = _wait_log(agent, offset, r"event=layer_installed digest=([0-9a-f]{64})").group(1)
        done = list(agent.stub.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=victim), timeout=300))[-1]
        assert done.done.digest == digest, "the two sandboxes' layers differ: the attack needs one layer"
        assert _present(agent, digest)  # the victim's CP records it on this host now
        call.cancel()  # the attacker's build is cancelled
        _wait_log(agent, offset, rf"event=layer_abandoned digest={digest}")
        assert _present(agent, digest), "the attacker's cancel removed the layer the victim's export had"


def test_an_abandoned_stream_keeps_a_layer_the_cp_found_here(agent: AgentProcess) -> None:
    """The victim's layer (the same bytes, in its store) found here by its CP's ``HasLayers``
    while the attacker's stream installed it: the CP records it on this host, pushes nothing."""
    attacker = _same_files(agent, uuid.uuid4().hex)
    with _destroyed(agent, attacker):
        offset = agent.log_path.stat().st_size
        call = _first_chunk(agent, attacker)
        digest = _wait_log(agent, offset, r"event=layer_installed digest=([0-9a-f]{64})").group(1)
        assert _asked(agent, digest)  # the victim's CP: here, recorded, nothing to push
        call.cancel()
        _wait_log(agent, offset, rf"event=layer_abandoned digest={digest}")
        assert _present(agent, digest), "the attacker's cancel removed a layer the victim's CP found here"


def test_two_abandoned_streams_of_one_layer_leave_nothing(agent: AgentProcess) -> None:
    token = uuid.uuid4().hex
    first, second = _same_files(agent, token), _same_files(agent, token)
    with _destroyed(agent, first, second):
        offset = agent.log_path.stat().st_size
        one = _first_chunk(agent, first)
        digest = _wait_log(agent, offset, r"event=layer_installed digest=([0-9a-f]{64})").group(1)
        two = _first_chunk(agent, second)
        one.cancel()
        two.cancel()
        deadline = time.monotonic() + SETTLE_S
        while _present(agent, digest):
            assert time.monotonic() < deadline, "two abandoned streams of one layer left it on the host"
            time.sleep(0.1)
