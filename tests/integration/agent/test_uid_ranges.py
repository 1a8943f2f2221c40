"""Each runc/crun sandbox runs as a host uid range of its own (templates.uid_base, idmap.py):
distinct ranges, the canonical layers seen with their owners inside, and what leaves a sandbox
(a snapshot's copy, an exported layer) stored in the canonical range again."""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.integration.agent.layer_tars import layer_tar, put_layer
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes (and a snapshot) of its own, and reads what those hold.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


TEAM = str(uuid.UUID(int=0x15A))
INSIDE = "cat /proc/self/uid_map; touch /tmp/made-by-root; stat -c %u:%g /etc/passwd"


def inside(agent: AgentProcess, sb: str, script: str) -> list[str]:
    res = agent.exec(sb, "sh", "-c", script)
    assert res.exit_code == 0, res.stderr
    return res.stdout.decode().splitlines()


def upper(agent: AgentProcess, sb: str) -> Path:
    return agent.data_dir / "sandboxes" / sb / "disk" / "upper"


def test_sandboxes_get_distinct_host_ranges(agent: AgentProcess) -> None:
    sids = [agent.create(memory_mb=128).sandbox_id for _ in range(2)]
    bases = []
    for sb in sids:
        uid_map, passwd_owner = inside(agent, sb, INSIDE)
        inner, base, size = (int(x) for x in uid_map.split())
        assert (inner, size) == (0, MAPPED_SIZE) and MAPPED_BASE < base < 2_000_000_000, uid_map
        assert passwd_owner == "0:0"  # the canonical template, id-mapped: root's inside
        # What root makes inside is host uid `base` outside: the sandbox's own range.
        st = os.stat(upper(agent, sb) / "tmp" / "made-by-root")
        assert (st.st_uid, st.st_gid) == (base, base)
        bases.append(base)
    assert len(set(bases)) == 2, bases
    for sb in sids:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def test_a_chain_layers_owners_show_inside(agent: AgentProcess) -> None:
    home = tarfile.TarInfo("home/user")
    home.type, home.mode, home.uid, home.gid = tarfile.DIRTYPE, 0o750, 1000, 1000
    digest = put_layer(agent.stub, layer_tar({"srv/page": b"hi\n"}, dirs=("srv",), extra=(home,)))
    sb = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[digest])).sandbox_id
    got = inside(agent, sb, "stat -c %u:%g /home/user /srv/page /etc/passwd")
    assert got == ["1000:1000", "0:0", "0:0"]
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def test_snapshots_and_exports_are_stored_canonical(agent: AgentProcess) -> None:
    s = agent.stub
    src = agent.create(memory_mb=128).sandbox_id
    inside(
        agent,
        src,
        "mkdir -p /home/u && chown 1000:1000 /home/u && echo x > /home/u/f && chown 1000 /home/u/f",
    )
    tpl = str(uuid.uuid4())
    s.CreateSnapshot(pb.CreateSnapshotRequest(sandbox_id=src, team_id=TEAM, template_id=tpl), timeout=120)
    stored = agent.data_dir / "templates" / "teams" / TEAM / tpl / "layers"
    top = max(stored.iterdir(), key=lambda p: int(p.name))
    assert os.stat(top / "home" / "u").st_uid == MAPPED_BASE + 1000  # not the source's range
    # Exported, the layer's owners are the container's.
    data = b"".join(c.chunk for c in s.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=src), timeout=120))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        owners = {m.name.rstrip("/"): (m.uid, m.gid) for m in tar.getmembers()}
    assert owners["home/u"] == (1000, 1000) and owners["home/u/f"] == (1000, 0), owners
    # A sandbox of the snapshot (another slot, another range) sees the owners as they were.
    new = agent.create(memory_mb=128, team_id=TEAM, template_id=tpl).sandbox_id
    assert inside(agent, new, "stat -c %u:%g /home/u /home/u/f; cat /home/u/f") == [
        "1000:1000",
        "1000:0",
        "x",
    ]
    for sb in (src, new):
        s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
    s.DeleteSnapshot(pb.DeleteSnapshotRequest(team_id=TEAM, template_id=tpl), timeout=60)
