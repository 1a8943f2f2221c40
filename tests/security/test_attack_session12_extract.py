"""Session 12: what a tenant's layer costs a host's agent when the agent extracts it (images
off, or a layer only extraction can apply). The tenant chooses its layers (build steps,
snapshots, imports); the agent receives them with ``PutLayer``, as these tests send them.

* A layer refused at its 66th member had made 16,000 directories by then (each member was
  checked, then applied), and removing them took the agent ~40 s (60 s at load 15) of an
  ext4 mounted ``discard``. Now a tar on disk is checked whole before anything is made: the
  agent's layer dir here is a tmpfs with room for a few thousand entries, which a refused
  layer used to fill (``No space left on device``) and now never touches.
* A layer's extraction ran in a thread of the agent: ~6 s of Python a 200,000-file layer,
  holding the GIL every RPC of every tenant needs. Now it runs in a child process, niced,
  with a CPU budget: the agent's own CPU for such an install is a fraction of its child's.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.machine import scratch_dir
from tests.integration.agent.layer_tars import digest, put_requests
from tests.security.hostile_tars import deep_distinct_dirs, hard, info, many_zero_files
from warren.layers import LayerError, extract_layer, scan_layer
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

ROOM = 4000  # entries the layer dir can take beyond what the agent made at its start


def remount(layers: Path, room: int) -> None:
    used = inodes_used(layers)
    subprocess.run(["mount", "-o", f"remount,nr_inodes={used + room}", str(layers)], check=True)


def inodes_used(layers: Path) -> int:
    st = os.statvfs(layers)
    return st.f_files - st.f_ffree


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    root = scratch_dir("attack-s12-extract")
    layers = root / "agent" / "data" / "layers"
    layers.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "warren-s12-extract", str(layers)], check=True)
    a = AgentProcess.standalone(root / "agent", env={"WARREN_AGENT_LAYER_IMAGES": "false"})
    try:
        a.start()
        yield a
    finally:
        try:
            a.stop()
        finally:
            subprocess.run(["umount", str(layers)], check=False)
            shutil.rmtree(root, ignore_errors=True)


def layers_dir(a: AgentProcess) -> Path:
    return a.data_dir / "layers"


def refusal(a: AgentProcess, data: bytes) -> tuple[grpc.StatusCode | None, str]:
    try:
        a.stub.PutLayer(put_requests(data), timeout=600)
    except grpc.RpcError as e:
        return e.code(), e.details()  # type: ignore[attr-defined]
    return None, ""


def files_then(n: int, last: tarfile.TarInfo) -> bytes:
    """``n`` empty files in directories the tar lists, then ``last``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            if i % 1000 == 0:
                tar.addfile(info(f"d{i // 1000}", tarfile.DIRTYPE, mode=0o755))
            tar.addfile(info(f"d{i // 1000}/f{i}"))
        tar.addfile(last)
    return buf.getvalue()


LATE_REFUSALS: dict[str, Callable[[], bytes]] = {
    "4000 files 250 levels deep, each under a directory of its own": lambda: deep_distinct_dirs(4000),
    "6000 files, then a hard link to a later file": lambda: files_then(6000, hard("h", "later")),
    "6000 files, then a path with dotdot": lambda: files_then(6000, info("d0/../../escaped-s12")),
    "6000 files, then an owner outside the range": lambda: files_then(6000, info("o", uid=70000)),
    "6000 files, then a whiteout of nothing": lambda: files_then(6000, info("d1/.wh.")),
}


@pytest.mark.parametrize("name", sorted(LATE_REFUSALS))
def test_a_layer_refused_late_makes_nothing_first(agent: AgentProcess, name: str) -> None:
    data = LATE_REFUSALS[name]()
    with pytest.raises(LayerError) as expected:  # what the check alone says of it
        scan_layer(io.BytesIO(data))
    layers = layers_dir(agent)
    remount(layers, ROOM)
    before = inodes_used(layers)
    code, detail = refusal(agent, data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, detail)
    assert str(expected.value) in detail, (detail, agent.log_tail(20))  # not "No space left"
    assert list(agent.stub.HasLayers(pb.HasLayersRequest(digests=[digest(data)])).missing) == [digest(data)]
    assert inodes_used(layers) == before, sorted(os.listdir(layers))
    assert not list(Path("/").glob("escaped-s12*")) and not list(layers.rglob("escaped-s12*"))


def test_a_fair_layer_still_fits_the_same_room(agent: AgentProcess) -> None:
    """The room the refused layers above were given takes a valid layer of 3000 files."""
    data = files_then(2999, info("last"))
    layers = layers_dir(agent)
    remount(layers, ROOM)
    code, detail = refusal(agent, data)
    assert code is None, detail
    assert len(os.listdir(layers / digest(data) / "tree")) == 4
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[digest(data)]))


def cpu_s(pid: int) -> tuple[float, float]:
    """(the process's own CPU, its waited-for children's), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick


def test_extracting_a_layer_of_many_files_is_not_the_agents_own_cpu(agent: AgentProcess) -> None:
    """100,000 empty files (50 MiB of tar): before, ~5 CPU-s of the agent's own threads (a GIL
    its RPCs wait for); now its child's, at a lower priority."""
    data = many_zero_files(100_000)
    layers = layers_dir(agent)
    remount(layers, 110_000)
    assert agent.proc is not None
    own0, kids0 = cpu_s(agent.proc.pid)
    agent.stub.PutLayer(put_requests(data), timeout=900)
    own1, kids1 = cpu_s(agent.proc.pid)
    own, kids = own1 - own0, kids1 - kids0
    print(f"\nagent's own CPU {own:.2f} s, its children's {kids:.2f} s")
    assert kids > 3 * own, (own, kids)
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[digest(data)]), timeout=600)


def test_a_layer_over_its_cpu_budget_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    """The budget (300 CPU-s in the agent) made small: the child is killed by the kernel
    (RLIMIT_CPU), the layer refused, what it made removed."""
    tar = tmp_path / "layer.tar"
    tar.write_bytes(many_zero_files(100_000))
    dest = tmp_path / "dest"
    with pytest.raises(LayerError, match="CPU-seconds"):
        extract_layer(tar, dest, uid_base=100_000, cpu_seconds=1)
    assert not dest.exists()
