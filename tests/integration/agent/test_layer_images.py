"""Layers installed as loop-mounted squashfs images (docs/templates.md §2): sandboxes see their
whiteouts and opaque dirs, hostile tars are refused as before, a restarted agent mounts them
again, a delete leaves no mount and no loop device, and the extraction fallback still works."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.integration.agent.layer_tars import digest, layer_tar, put_layer, put_requests
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def extracting(agent_root: Path) -> Iterator[AgentProcess]:
    """An agent told to extract every layer (the fallback)."""
    a = AgentProcess.standalone(agent_root / "extracting", env={"WARREN_AGENT_LAYER_IMAGES": "false"}).start()
    try:
        yield a
    finally:
        a.finish()


def layer_dir(agent: AgentProcess, d: str) -> Path:
    return agent.data_dir / "layers" / d


def is_image(agent: AgentProcess, d: str) -> bool:
    return (layer_dir(agent, d) / "layer.sqfs").is_file() and os.path.ismount(layer_dir(agent, d) / "tree")


def loops_under(path: Path) -> list[str]:
    """Loop devices whose backing file is below ``path``."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(path) + "/"):
            found.append(f"{dev.name}: {backing}")
    return found


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path) + "/")]


def wait_released(path: Path) -> list[str]:
    """Mounts and loop devices still under ``path`` after up to 60 s (a loop device clears
    itself shortly after its unmount)."""
    deadline = time.monotonic() + 60
    while (left := mounts_under(path) + loops_under(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def whiteout_layers() -> tuple[bytes, bytes]:
    lower = layer_tar(
        {"data/keep": b"k", "data/gone": b"g", "opq/old1": b"1", "opq/old2": b"2"}, dirs=("data", "opq")
    )
    # The opaque marker right after its directory, as Docker and our own export write it.
    upper = layer_tar({"opq/.wh..wh..opq": b"", "opq/new": b"n", "data/.wh.gone": b""}, dirs=("opq",))
    return lower, upper


def check_whiteouts(agent: AgentProcess, *, images: bool) -> None:
    lower, upper = whiteout_layers()
    ds = [put_layer(agent.stub, lower), put_layer(agent.stub, upper)]
    assert [is_image(agent, d) for d in ds] == [images, images], agent.log_tail(60)
    r = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=ds))
    try:
        res = agent.exec(r.sandbox_id, "sh", "-c", "ls /data; echo --; ls /opq; cat /opq/new")
        assert res.stdout == b"keep\n--\nnew\nn", res.stderr
        # The sandbox writes on top of read-only layers.
        res = agent.exec(
            r.sandbox_id, "sh", "-c", "echo w > /data/keep && rm /opq/new && cat /data/keep; ls /opq"
        )
        assert res.stdout == b"w\n", res.stderr
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id))
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=ds))


def test_whiteouts_and_opaque_dirs_hide_lower_files(agent: AgentProcess) -> None:
    check_whiteouts(agent, images=True)


def test_the_extraction_fallback_still_works(extracting: AgentProcess) -> None:
    check_whiteouts(extracting, images=False)
    assert "event=layer_install_mode images=False" in extracting.log_tail(10_000)


def test_a_layer_only_extraction_can_apply_is_extracted(agent: AgentProcess) -> None:
    # A later member replacing an earlier one: valid, but an image cannot take it back.
    again = tarfile.TarInfo("f")
    again.type, again.linkname = tarfile.SYMTYPE, "elsewhere"
    d = put_layer(agent.stub, layer_tar({"f": b"first"}, extra=(again,)))
    assert not is_image(agent, d) and os.readlink(layer_dir(agent, d) / "tree" / "f") == "elsewhere"
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))


def hostile_tars() -> list[bytes]:
    escape = tarfile.TarInfo("../../../../escaped-by-image")
    link = tarfile.TarInfo("etc")
    link.type, link.linkname = tarfile.SYMTYPE, "/"
    through = tarfile.TarInfo("etc/escaped-through-image-link")
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/shadow"
    owner = tarfile.TarInfo("o")
    owner.uid = 70000
    extras = [(escape,), (link, through), (hard,), (owner,)]
    return [layer_tar({}, extra=e) for e in extras]


def test_hostile_tars_are_refused_and_leave_nothing(agent: AgentProcess) -> None:
    for data in hostile_tars():
        with pytest.raises(grpc.RpcError) as ei:
            put_layer(agent.stub, data)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()  # type: ignore[attr-defined]
        assert list(agent.stub.HasLayers(pb.HasLayersRequest(digests=[digest(data)])).missing) == [
            digest(data)
        ]
    layers = agent.data_dir / "layers"
    assert not [p for p in layers.iterdir() if p.name.startswith((".tmp-", ".del-"))]
    assert [x for x in mounts_under(layers) + loops_under(layers) if "/.tmp-" in x] == []
    assert not list(agent.root.parent.rglob("escaped-*")) and not Path("/escaped-through-image-link").exists()
    # An absolute name lands inside the layer; a device node is skipped.
    null = tarfile.TarInfo("dev-null")
    null.type, null.devmajor, null.devminor = tarfile.CHRTYPE, 1, 3
    d = put_layer(agent.stub, layer_tar({"/abs/file": b"inside"}, extra=(null,)))
    assert is_image(agent, d), agent.log_tail(60)
    assert sorted(os.listdir(layer_dir(agent, d) / "tree")) == ["abs"]
    assert (layer_dir(agent, d) / "tree" / "abs" / "file").read_bytes() == b"inside"
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))


def test_bytes_corrupted_on_the_way_are_refused_though_converted_as_they_came(agent: AgentProcess) -> None:
    # The image is made while the bytes arrive; the digest decides at the end. A layer of
    # several chunks whose last one was changed converts fine, a hostile tar sent under another
    # digest fails conversion first: both are DATA_LOSS, and nothing is mounted or kept.
    good = layer_tar({f"d/f{i}": os.urandom(4000) for i in range(800)}, dirs=("d",))
    assert len(good) > 3 << 20
    flipped = bytearray(good)
    flipped[len(good) - 3000] ^= 0xFF  # file data in the last chunk: still a valid tar
    hostile = hostile_tars()[0]
    layers = agent.data_dir / "layers"
    for data, claimed in ((bytes(flipped), digest(good)), (hostile, digest(good))):
        with pytest.raises(grpc.RpcError) as ei:
            agent.stub.PutLayer(put_requests(data, as_digest=claimed), timeout=60)
        assert ei.value.code() == grpc.StatusCode.DATA_LOSS, ei.value.details()  # type: ignore[attr-defined]
        assert list(agent.stub.HasLayers(pb.HasLayersRequest(digests=[claimed])).missing) == [claimed]
        assert not [p for p in layers.iterdir() if p.name.startswith((".tmp-", ".del-"))]
        assert wait_released(layers) == []
    d = put_layer(agent.stub, good)  # the true bytes install, as an image
    assert is_image(agent, d), agent.log_tail(60)
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))
    assert wait_released(layers) == []


def test_delete_leaves_no_mount_and_no_loop_device(agent: AgentProcess) -> None:
    d = put_layer(agent.stub, layer_tar({f"f{i}": os.urandom(500) for i in range(50)}))
    assert is_image(agent, d), agent.log_tail(60)
    assert loops_under(layer_dir(agent, d)) != []
    res = agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))
    assert list(res.deleted) == [d]
    assert not layer_dir(agent, d).exists()
    assert wait_released(agent.data_dir / "layers") == []


def test_a_restarted_agent_mounts_its_layers_again(agent_root: Path) -> None:
    a = AgentProcess.standalone(agent_root / "restarted").start()
    try:
        d = put_layer(a.stub, layer_tar({"opt/hello": b"still here\n"}, dirs=("opt",)))
        assert is_image(a, d)
        a.stop()
        # A stopped agent leaves nothing mounted that no sandbox holds.
        assert wait_released(a.data_dir / "layers") == []
        # What a crash can leave: an install's image mounted in its .tmp- dir, and a loop
        # device attached to an installed image but never mounted.
        image = layer_dir(a, d) / "layer.sqfs"
        tmp = a.data_dir / "layers" / ".tmp-crashed"
        (tmp / "tree").mkdir(parents=True)
        shutil.copy(image, tmp / "layer.sqfs")
        mount = ["mount", "-t", "squashfs", "-o", "loop,ro", str(tmp / "layer.sqfs"), str(tmp / "tree")]
        subprocess.run(mount, check=True, timeout=60)
        subprocess.run(["losetup", "-f", str(image)], check=True, timeout=60)
        assert len(loops_under(a.data_dir / "layers")) == 2
        a.start()
        assert is_image(a, d)
        assert not tmp.exists()
        # The leftover's loop device clears itself shortly after its (lazy) unmount.
        deadline = time.monotonic() + 60
        while len(loops_under(a.data_dir / "layers")) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [x.split(": ", 1)[1] for x in loops_under(a.data_dir / "layers")] == [str(image)]
        r = a.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[d]))
        assert a.exec(r.sandbox_id, "cat", "/opt/hello").stdout == b"still here\n"
        a.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id))
        assert wait_no_leaks(a, r.sandbox_id, r.host_ip) == []
    finally:
        a.finish()
    assert wait_released(a.data_dir / "layers") == []
