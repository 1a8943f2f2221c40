"""A create whose container's init dies before its guest answers fails at once (the init's exit
status in the error), not after the guest-ready timeout, and leaves nothing behind. The chain's
/usr/bin/python3 (the guest agent's interpreter) is a script that exits 3."""

from __future__ import annotations

import glob
import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import leaks
from tests.integration.agent.layer_tars import put_layer
from warren import ids
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# Past the liveness bound below (and within the harness's 120 s create deadline): a create that
# waited for the guest's timeout does not end in time.
GUEST_READY_TIMEOUT_S = 90
ENDS_WITHIN_S = 60
SB_ID = ids.format_id(ids.Kind.SANDBOX, uuid.UUID(int=0xD1E3))
DEAD_PYTHON = b"#!/bin/sh\nexit 3\n"


@pytest.fixture(scope="module")
def agent(agent_root: Path) -> Iterator[AgentProcess]:
    env = {"WARREN_AGENT_GUEST_READY_TIMEOUT": str(GUEST_READY_TIMEOUT_S)}
    a = AgentProcess.standalone(agent_root / "agent", env=env).start()
    try:
        yield a
    finally:
        a.finish()


def dead_python_layer() -> bytes:
    """/usr/bin/python3 (the guest's interpreter) as a script that exits 3."""
    script = tarfile.TarInfo("usr/bin/python3")
    script.size, script.mode = len(DEAD_PYTHON), 0o755
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("usr", "usr/bin"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        t.addfile(script, io.BytesIO(DEAD_PYTHON))
    return buf.getvalue()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def _leftovers(agent: AgentProcess, sb_id: str) -> list[str]:
    # The slot is not known (the create failed): no claim may name the sandbox. Processes exit
    # and cgroups go asynchronously in the kernel: allow a moment.
    deadline = time.monotonic() + 30
    while True:
        found = leaks(agent, sb_id, "10.11.255.253")
        found += [f"slot claim {p}" for p in glob.glob("/run/warren/netslots/*") if sb_id in _read(p)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_create_whose_init_exits_fails_at_once_and_leaves_nothing(agent: AgentProcess) -> None:
    dead = put_layer(agent.stub, dead_python_layer())
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        agent.create(sandbox_id=SB_ID, memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[dead]))
    took = time.monotonic() - t0
    assert took < ENDS_WITHIN_S, f"the create waited {took:.0f} s: for the guest timeout, not the init's exit"
    code = ei.value.code()  # type: ignore[attr-defined]
    details = str(ei.value.details())  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INTERNAL, details
    assert "init exited (status 3) before its guest answered" in details
    assert _leftovers(agent, SB_ID) == []
    listed = agent.stub.ListSandboxes(pb.ListSandboxesRequest())
    assert SB_ID not in {s.sandbox_id for s in listed.sandboxes} | set(listed.creating_sandbox_ids)
    assert {x.digest: x.in_use for x in agent.stub.ListLayers(pb.ListLayersRequest()).layers}[dead] is False
    # The agent still makes sandboxes.
    ok = agent.create(memory_mb=128)
    assert agent.exec(ok.sandbox_id, "echo", "ok").stdout == b"ok\n"
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=ok.sandbox_id))
