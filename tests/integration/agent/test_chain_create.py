"""Creating a sandbox from a chain of layers (docs/templates.md §2): the template's config applied
(env under the request's, workdir and user as exec defaults, a start command that is ready
before the create answers), a scratch base, a template that never gets ready leaving nothing,
and the chain's layers kept in use across an agent restart."""

from __future__ import annotations

import glob
import tarfile
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import leaks
from tests.harness.machine import MINIMAL_CACHE
from tests.integration.agent.layer_tars import digest, layer_tar, put_layer, put_requests
from warren import ids
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MAPPED_BASE = 1_000_000_000
PASSWD = (MINIMAL_CACHE / "rootfs/etc/passwd").read_bytes() + b"app:x:1000:1000::/home/app:/bin/sh\n"
GROUP = (MINIMAL_CACHE / "rootfs/etc/group").read_bytes() + b"app:x:1000:\n"
OS_LAYER_SKIPS = {
    "usr/share",
    "var",
    "usr/lib/python3.11/test",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/gconv",
}
SERVER = 'echo "$(id -un) $(pwd)" > /tmp/started; exec python3 -m http.server 8000 --bind 127.0.0.1'
READY = "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=1)\""


def code_of(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()  # type: ignore[attr-defined, no-any-return]


def details(e: grpc.RpcError) -> str:
    return e.details()  # type: ignore[attr-defined, no-any-return]


def app_layer() -> bytes:
    """/etc/passwd and /etc/group with a user `app`, its home, and /srv/app with a page."""
    home = tarfile.TarInfo("home/app")
    home.type, home.mode, home.uid, home.gid = tarfile.DIRTYPE, 0o750, 1000, 1000
    files = {"etc/passwd": PASSWD, "etc/group": GROUP, "srv/app/index.html": b"<h1>app</h1>\n"}
    return layer_tar(files, dirs=("srv", "srv/app"), extra=(home,))


@pytest.fixture(scope="module")
def app(agent: AgentProcess) -> str:
    return put_layer(agent.stub, app_layer())


def config(**kw: object) -> pb.TemplateConfig:
    return pb.TemplateConfig(**kw)  # type: ignore[arg-type]


def test_config_env_workdir_and_user_are_the_defaults(agent: AgentProcess, app: str) -> None:
    cfg = config(env={"TPL": "template", "BOTH": "template"}, workdir="/srv/app", user="app")
    r = agent.create(
        memory_mb=128,
        env={"BOTH": "request"},
        chain=pb.TemplateChain(base="minimal", layers=[app], config=cfg),
    )
    sb = r.sandbox_id
    res = agent.exec(sb, "sh", "-c", 'id -un; pwd; echo "$TPL $BOTH"; cat index.html')
    assert res.stdout.decode().splitlines() == ["app", "/srv/app", "template request", "<h1>app</h1>"]
    # A call's own user and cwd win over the template's.
    assert agent.exec(sb, "sh", "-c", "id -un; pwd", user="root", cwd="/tmp").stdout == b"root\n/tmp\n"
    # Files are the template user's too.
    agent.stub.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path="/home/app/note", content=b"x"))
    assert agent.stub.Stat(pb.StatRequest(sandbox_id=sb, path="/home/app/note")).entry.owner == "app"
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))


def test_start_command_answers_before_the_create_does(agent: AgentProcess, app: str) -> None:
    cfg = config(start_cmd=SERVER, ready_cmd=READY, workdir="/srv/app", user="app")
    r = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[app], config=cfg))
    sb = r.sandbox_id
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/index.html').read().decode())"
    assert agent.py(sb, fetch).stdout == b"<h1>app</h1>\n\n"
    procs = agent.stub.ListProcesses(pb.ListProcessesRequest(sandbox_id=sb)).processes
    assert [p.tag for p in procs if p.tag] == ["start"]
    # It runs as the template's user, in its workdir.
    assert agent.exec(sb, "cat", "/tmp/started").stdout == b"app /srv/app\n"
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))


def _read(path: str) -> str:
    """A claim file's text; empty once freed (other agents free theirs at any moment)."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def _leftovers(agent: AgentProcess, sb_id: str) -> list[str]:
    # The slot is not known (the create failed): no claim anywhere may name the sandbox.
    # Processes exit and cgroups go asynchronously in the kernel: allow a moment.
    deadline = time.monotonic() + 30
    while True:
        found = leaks(agent, sb_id, "10.11.255.253")
        found += [f"slot claim {p}" for p in glob.glob("/run/warren/netslots/*") if sb_id in _read(p)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_template_that_never_gets_ready_fails_the_create_and_leaves_nothing(
    agent: AgentProcess, app: str
) -> None:
    sb_id = ids.format_id(ids.Kind.SANDBOX, uuid.uuid4())
    cfg = config(
        start_cmd="echo starting; sleep 600",
        ready_cmd="printf 'not\\nyet \\303\\251'; exit 1",
        ready_timeout_sec=1,
    )
    with pytest.raises(grpc.RpcError) as ei:
        agent.create(
            sandbox_id=sb_id, memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[app], config=cfg)
        )
    assert code_of(ei.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert details(ei.value) == "template not ready: exit 1: not\nyet é"
    assert _leftovers(agent, sb_id) == []
    listed = agent.stub.ListSandboxes(pb.ListSandboxesRequest())
    assert sb_id not in {s.sandbox_id for s in listed.sandboxes} | set(listed.creating_sandbox_ids)
    assert {x.digest: x.in_use for x in agent.stub.ListLayers(pb.ListLayersRequest()).layers}[app] is False


def os_layer(tar: Path) -> str:
    """`minimal` without its docs and package state, as one layer with 0-based owners (what an
    imported image is); its digest. Smaller than the whole rootfs: every file costs a create."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.name in OS_LAYER_SKIPS or info.isdev() or info.name.endswith("/__pycache__"):
            return None
        info.uid, info.gid, info.uname, info.gname = info.uid % MAPPED_BASE, info.gid % MAPPED_BASE, "", ""
        return info

    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for entry in sorted((MINIMAL_CACHE / "rootfs").iterdir()):
            t.add(entry, arcname=entry.name, filter=keep)
    return digest(tar.read_bytes())


def test_scratch_chain_gets_the_mount_points_from_the_skeleton(agent: AgentProcess, tmp_path: Path) -> None:
    tar = tmp_path / "os.tar"
    os_digest = os_layer(tar)
    agent.stub.PutLayer(put_requests(tar.read_bytes()), timeout=300)
    r = agent.create(memory_mb=128, chain=pb.TemplateChain(base="scratch", layers=[os_digest]))
    sb = r.sandbox_id
    assert agent.exec(sb, "cat", "/etc/hostname").stdout == f"{sb}\n".encode()
    agent.exec(sb, "sh", "-c", "echo hi > /root/f")
    # The runtime's mount points are in no layer the sandbox writes.
    upper = agent.data_dir / "sandboxes" / sb / "disk" / "upper"
    written = {p.name for p in upper.iterdir()}
    assert "root" in written and written.isdisjoint({".warren", "run", "etc", "dev", "proc", "sys"})
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))
    assert list(agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[os_digest])).deleted) == [os_digest]


def test_chain_sandboxes_keep_their_layers_and_defaults_across_a_restart(
    agent: AgentProcess, app: str
) -> None:
    s = agent.stub
    cfg = config(workdir="/srv/app", user="app")
    running = agent.create(
        memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[app], config=cfg)
    ).sandbox_id
    other = put_layer(s, layer_tar({"other": b"1"}))
    paused = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[other])).sandbox_id
    s.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=paused))
    agent.stop()
    # What a crash mid-install or mid-delete leaves: removed at startup.
    crashed = [agent.data_dir / "layers" / name for name in (".tmp-crashed", ".del-crashed")]
    for d in crashed:
        (d / "tree").mkdir(parents=True)
    agent.start()
    assert not any(d.exists() for d in crashed)
    res = agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[app, other]))
    assert (list(res.deleted), sorted(res.in_use)) == ([], sorted([app, other]))
    assert agent.exec(running, "sh", "-c", "id -un; pwd").stdout == b"app\n/srv/app\n"
    for sb in (running, paused):
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))
    res = agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[app, other]))
    assert (sorted(res.deleted), list(res.in_use)) == (sorted([app, other]), [])
