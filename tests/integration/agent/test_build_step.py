"""RunBuildStep (one RUN of a template build in a transient sandbox) and ExportSnapshot (a
sandbox's writable layer as a store layer), over the agent's gRPC API: the layers they stream
hold the step's files and whiteouts and are installed on the host, and whatever happens
(failure, timeout, too large, the caller going away) nothing of the step stays behind."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import tarfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

STEP = (
    "set -e; mkdir -p /opt/built; echo built > /opt/built/file; rm /etc/debian_version; "
    "rm -rf /usr/share/doc; mkdir /usr/share/doc; touch /usr/share/doc/only; "
    'echo "out $TPL $(pwd)"; echo err >&2'
)


def code_of(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()  # type: ignore[attr-defined, no-any-return]


@dataclass
class Step:
    output: bytes = b""
    exit_code: int | None = None
    tar: bytes = b""
    chunks: list[int] = field(default_factory=list)
    layer: pb.LayerMeta | None = None


def collect(events: Iterable[pb.BuildStepEvent]) -> Step:
    out = Step()
    for ev in events:
        kind = ev.WhichOneof("event")
        assert out.layer is None, "nothing follows the layer"
        if kind == "output":
            assert len(ev.output) <= 64 << 10 and out.exit_code is None
            out.output += ev.output
        elif kind == "exit_code":
            out.exit_code = ev.exit_code
        elif kind == "layer_chunk":
            assert out.exit_code == 0
            out.chunks.append(len(ev.layer_chunk))
            out.tar += ev.layer_chunk
        else:
            out.layer = ev.layer
    return out


def step(agent: AgentProcess, cmd: str, **kw: object) -> Iterable[pb.BuildStepEvent]:
    chain = kw.pop("chain", pb.TemplateChain(base="minimal"))
    req = pb.RunBuildStepRequest(build_id="bld-test", chain=chain, cmd=cmd, memory_mb=128, **kw)  # type: ignore[arg-type]
    return agent.stub.RunBuildStep(req, timeout=120)  # type: ignore[no-any-return]


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name.removeprefix("./"): m for m in t.getmembers()}


def _claims(owner: str) -> dict[str, str]:
    """Network-slot claim files of ``owner`` (an agent's data dir) → their holder. Other agents
    on this machine (the other test worker's) claim and free slots at any moment."""
    out = {}
    for p in glob.glob("/run/warren/netslots/*"):
        try:
            lines = Path(p).read_text().split("\n")
        except FileNotFoundError:
            continue  # freed since the listing
        if lines[0] == owner and len(lines) > 1:
            out[p] = lines[1]
    return out


def leftovers(agent: AgentProcess) -> list[str]:
    """Anything this agent's build steps could leave behind on the host. Only this agent's: the
    other test worker may be running build steps (template builds) of its own meanwhile."""
    found = [p for p in os.listdir(agent.data_dir / "sandboxes") if p.startswith("step-")]
    found += [p for p in os.listdir(agent.data_dir / "runc") if p.startswith("step-")]
    found += [p for p in os.listdir(agent.data_dir / "layers") if p.startswith((".tmp-", ".del-"))]
    steps = set(
        re.findall(r"event=build_step_start \S+ sandbox_id=(step-[0-9a-z]+)", agent.log_path.read_text())
    )
    found += [d for d in glob.glob("/sys/fs/cgroup/*/warren/step-*") if os.path.basename(d) in steps]
    with open("/proc/self/mountinfo") as f:
        found += [line.split()[4] for line in f if "/step-" in line and str(agent.data_dir) in line]
    found += [p for p, holder in _claims(str(agent.data_dir)).items() if holder.startswith("step-")]
    return found


def no_leftovers(agent: AgentProcess) -> list[str]:
    deadline = time.monotonic() + 30  # processes and cgroups go asynchronously (slowly under load)
    while (found := leftovers(agent)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_a_step_makes_a_layer_with_its_files_and_whiteouts(agent: AgentProcess) -> None:
    # The template's start and ready commands are its sandboxes', not its build steps'.
    cfg = pb.TemplateConfig(env={"TPL": "tpl"}, workdir="/tmp", start_cmd="touch /started", ready_cmd="false")
    chain = pb.TemplateChain(base="minimal", config=cfg)
    got = collect(step(agent, STEP, chain=chain))
    assert got.exit_code == 0 and got.layer is not None
    assert b"out tpl /tmp\n" in got.output and b"err\n" in got.output
    assert max(got.chunks) <= 1 << 20
    assert (got.layer.digest, got.layer.size) == (hashlib.sha256(got.tar).hexdigest(), len(got.tar))
    files = members(got.tar)
    assert files["opt/built/file"].size == len(b"built\n")
    assert files["etc/.wh.debian_version"].isfile() and files["usr/share/doc/.wh..wh..opq"].isfile()
    # The runtime's mount points and identity files are not the step's.
    assert (
        not {".warren", "run/warren", "etc/hostname", "etc/hosts", "etc/resolv.conf", "started"}
        & files.keys()
    )
    assert no_leftovers(agent) == []
    listed = agent.stub.ListSandboxes(pb.ListSandboxesRequest())
    assert not listed.sandboxes and not listed.creating_sandbox_ids

    # Installed here: the next step (or a sandbox) on it needs no fetch.
    assert list(agent.stub.HasLayers(pb.HasLayersRequest(digests=[got.layer.digest])).missing) == []
    sb = agent.create(
        memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[got.layer.digest])
    ).sandbox_id
    res = agent.exec(
        sb, "sh", "-c", "cat /opt/built/file; test -e /etc/debian_version || echo gone; ls /usr/share/doc"
    )
    assert res.stdout == b"built\ngone\nonly\n"
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))


def test_a_failing_step_gives_its_output_and_exit_code_and_no_layer(agent: AgentProcess) -> None:
    got = collect(step(agent, "echo about to fail; touch /made; exit 3"))
    assert (got.output, got.exit_code, got.tar, got.layer) == (b"about to fail\n", 3, b"", None)
    assert no_leftovers(agent) == []


def test_time_and_size_limits_end_the_step_and_leave_nothing(agent: AgentProcess) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        collect(step(agent, "echo started; sleep 60", timeout_sec=1))
    assert code_of(ei.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert no_leftovers(agent) == []
    with pytest.raises(grpc.RpcError) as ei:
        collect(step(agent, "head -c 3000000 /dev/urandom > /big", max_layer_bytes=1_000_000))
    assert code_of(ei.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert no_leftovers(agent) == []
    missing = "0" * 64
    with pytest.raises(grpc.RpcError) as ei:
        collect(step(agent, "true", chain=pb.TemplateChain(base="minimal", layers=[missing])))
    assert code_of(ei.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert ei.value.details() == f"missing layers: {missing}"  # type: ignore[attr-defined]


def test_a_caller_that_goes_away_leaves_nothing(agent: AgentProcess) -> None:
    events = step(agent, "echo started; sleep 60")
    first = next(iter(events))
    assert first.output == b"started\n"
    assert leftovers(agent) != []  # the step's sandbox, running
    assert not agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
    events.cancel()  # type: ignore[attr-defined]
    assert no_leftovers(agent) == []


def test_export_snapshot_streams_the_writable_layer_and_installs_it(agent: AgentProcess) -> None:
    s = agent.stub
    r = agent.create(memory_mb=128)
    agent.exec(r.sandbox_id, "sh", "-c", "mkdir /work && echo saved > /work/f && rm /etc/debian_version")
    chunks, done = [], None
    for msg in s.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=r.sandbox_id), timeout=120):
        assert done is None
        if msg.WhichOneof("msg") == "chunk":
            chunks.append(msg.chunk)
        else:
            done = msg.done
    tar = b"".join(chunks)
    assert done is not None and (done.digest, done.size) == (hashlib.sha256(tar).hexdigest(), len(tar))
    files = members(tar)
    assert files["work/f"].isfile() and files["etc/.wh.debian_version"].isfile()
    # A running sandbox is paused first and stays paused, as for any snapshot.
    assert {x.sandbox_id: x.status for x in s.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}[
        r.sandbox_id
    ] == "paused"
    sb = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[done.digest])).sandbox_id
    assert agent.exec(sb, "sh", "-c", "cat /work/f; ls /etc/debian_version").stdout == b"saved\n"
    with pytest.raises(grpc.RpcError) as ei:
        list(s.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id="sb-nope")))
    assert code_of(ei.value) == grpc.StatusCode.NOT_FOUND

    # A legacy (host-local) snapshot still works; a sandbox made from one has lower layers in
    # no store, so its writable layer alone is not its filesystem.
    team, legacy = str(uuid.uuid4()), str(uuid.uuid4())
    s.CreateSnapshot(pb.CreateSnapshotRequest(sandbox_id=r.sandbox_id, team_id=team, template_id=legacy))
    old = agent.create(memory_mb=128, team_id=team, template_id=legacy).sandbox_id
    assert agent.exec(old, "cat", "/work/f").stdout == b"saved\n"
    with pytest.raises(grpc.RpcError) as ei:
        list(s.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=old)))
    assert code_of(ei.value) == grpc.StatusCode.FAILED_PRECONDITION
    s.DeleteSnapshot(pb.DeleteSnapshotRequest(team_id=team, template_id=legacy))
    for x in (r.sandbox_id, sb, old):
        s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=x))


def test_a_step_cut_short_by_an_agent_crash_is_removed_at_restart(agent: AgentProcess) -> None:
    events = step(agent, "echo started; sleep 60")
    assert next(iter(events)).output == b"started\n"
    agent.kill9()
    assert leftovers(agent) != []  # the container outlives the agent, like every sandbox
    agent.start()
    assert no_leftovers(agent) == []
    assert not agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes


def test_a_terminate_ends_a_running_step_and_leaves_nothing(agent: AgentProcess) -> None:
    """``Terminate`` (the host taken out of service: no agent will start on this data dir again)
    ends the steps under way too, not only the registered sandboxes. Before, a step's sandbox
    ran on past its agent, mounted and holding its network slot (session 35)."""
    events = step(agent, "echo started; sleep 600")
    assert next(iter(events)).output == b"started\n"
    agent.stub.Terminate(pb.TerminateRequest(), timeout=10)
    assert agent.proc is not None
    agent.proc.wait(90)
    assert leftovers(agent) == []  # at once: nothing is left for a next agent to remove
    with pytest.raises(grpc.RpcError) as ei:
        collect(events)  # the step was ended, and says why (before: gRPC's "Cancelled")
    assert code_of(ei.value) == grpc.StatusCode.UNAVAILABLE, ei.value
    assert "taken out of service" in ei.value.details(), ei.value  # type: ignore[attr-defined]
    assert "event=build_step_ended" in agent.log_tail(400)
    agent.start()
