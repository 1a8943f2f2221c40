"""Layer tars a hostile template author or image importer would craft, sent to real agents the way
the control plane sends them (``PutLayer``): one that installs layers as squashfs images
(docs/templates.md §2) and one that extracts them (``WARREN_AGENT_LAYER_IMAGES=false``). The
tests name no converter: whatever turns a tar into a layer on the agent is what they attack.

Expected of every tar: refused with ``INVALID_ARGUMENT`` or installed sanitised; never a host
path written or resolved; nothing left behind (temp dirs, mounts, loop devices); and a set-uid
binary in a layer does not make a sandbox user root (the layer and the overlay are nosuid,
under runc and under gVisor).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.harness.machine import MINIMAL_CACHE, scratch_dir
from tests.integration.agent.layer_tars import digest, put_requests
from tests.security.hostile_tars import REFUSED, deep_distinct_dirs, entries, hard, info, many_zero_files, sym
from tests.unit.layers.images import oci_layout
from warren.layers import LayerError
from warren.layers.oci_image import read_image
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MODES = {"images": {}, "extract": {"WARREN_AGENT_LAYER_IMAGES": "false"}}
# What an escape would create: file names no layer test uses elsewhere, looked for where the
# tars aim them.
ESCAPE_GLOBS = ("/escaped-*", "/tmp/escaped-*", "/etc/escaped-*")


@pytest.fixture(scope="module", params=sorted(MODES))
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    root = scratch_dir(f"attack-layers-{request.param}")
    a = AgentProcess.standalone(root / "agent", env=MODES[request.param]).start()
    a.mode = request.param  # type: ignore[attr-defined]
    try:
        yield a
    finally:
        try:
            if a.proc is not None and a.proc.poll() is None:
                a.destroy_all()
        finally:
            a.stop()
            shutil.rmtree(root, ignore_errors=True)


def put(a: AgentProcess, data: bytes, timeout: float = 120) -> str:
    a.stub.PutLayer(put_requests(data), timeout=timeout)
    return digest(data)


def tree(a: AgentProcess, d: str) -> Path:
    return a.data_dir / "layers" / d / "tree"


def leftovers(a: AgentProcess) -> list[str]:
    """Temp dirs, mounts and loop devices of installs that did not finish, and escaped files."""
    layers = a.data_dir / "layers"
    found = [p.name for p in layers.iterdir() if p.name.startswith((".tmp-", ".del-"))]
    with open("/proc/self/mountinfo") as f:
        found += [ln.split()[4] for ln in f if ln.split()[4].startswith(str(layers) + "/.")]
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(layers) + "/."):
            found.append(f"{dev.name}: {backing}")
    for pattern in ESCAPE_GLOBS:
        found += [str(p) for p in Path("/").glob(pattern.lstrip("/"))]
    try:
        found += [str(p) for p in a.root.rglob("escaped-*")]
    except FileNotFoundError as e:  # a temp dir went while the walk was in it: not settled yet
        found.append(f"(removed during the walk) {e.filename}")
    return found


def wait_clean(a: AgentProcess) -> list[str]:
    deadline = time.monotonic() + 60  # a loop device clears itself shortly after its umount
    while (left := leftovers(a)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def refusal(a: AgentProcess, data: bytes) -> tuple[grpc.StatusCode | None, str]:
    try:
        put(a, data)
    except grpc.RpcError as e:
        return e.code(), e.details()  # type: ignore[attr-defined]
    return None, ""


def test_hostile_tars_are_refused_and_leave_nothing(agent: AgentProcess) -> None:
    wrong = {}
    for name, make in REFUSED.items():
        data = make()
        code, detail = refusal(agent, data)
        if code != grpc.StatusCode.INVALID_ARGUMENT:
            wrong[name] = (code, detail)
            continue
        missing = agent.stub.HasLayers(pb.HasLayersRequest(digests=[digest(data)])).missing
        assert list(missing) == [digest(data)], name
    assert wrong == {}, agent.log_tail(80)
    assert wait_clean(agent) == []


def xattrs_in(root: Path) -> list[str]:
    found = []
    for d, dirs, files in os.walk(root):
        for n in [*dirs, *files, "."]:
            p = os.path.join(d, n)
            try:
                xs = os.listxattr(p, follow_symlinks=False)
            except OSError as e:  # a squashfs image made without any xattr has no table
                assert e.errno == errno.EOPNOTSUPP, e
                xs = []
            found += [f"{p}: {x}" for x in xs if x != "trusted.overlay.opaque"]
    return found


def test_devices_xattrs_and_capabilities_are_dropped(agent: AgentProcess) -> None:
    """Device nodes are skipped, a fifo stays a fifo, and no xattr of the tar reaches the layer:
    not a file capability, not overlayfs' own redirect/origin/metacopy, not a `user.` one, not
    one smuggled in a file name that looks like a PAX record."""
    cap = "\x01\x00\x00\x02\xff\xff\xff\xff" + "\x00" * 12  # every capability, permitted+effective
    capfile = info("bin/capped", mode=0o755, pax_headers={"SCHILY.xattr.security.capability": cap})
    redirect = info(
        "redir",
        tarfile.DIRTYPE,
        mode=0o755,
        pax_headers={
            "SCHILY.xattr.trusted.overlay.redirect": "/etc",
            "SCHILY.xattr.trusted.overlay.origin": "x",
            "SCHILY.xattr.trusted.overlay.metacopy": "",
            "SCHILY.xattr.user.note": "hello",
        },
    )
    smuggle = "n" * 120 + "\n47 SCHILY.xattr.security.capability=\x01\x01\x01\x02\xff\xff\n"
    data = entries(
        info("dev-null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        info("sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o666),
        info("pipe", tarfile.FIFOTYPE, mode=0o644),
        capfile,
        redirect,
        info(smuggle, mode=0o755),
        sym("abs-link", "/etc/shadow"),
    )
    d = put(agent, data)
    t = tree(agent, d)
    names = sorted(os.listdir(t))
    assert names == sorted(["bin", "pipe", "redir", smuggle, "abs-link"]), names
    assert stat.S_ISFIFO(os.lstat(t / "pipe").st_mode)
    assert os.readlink(t / "abs-link") == "/etc/shadow"  # data, never resolved on the host
    assert xattrs_in(t) == []
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))
    assert wait_clean(agent) == []


def suid_python() -> bytes:
    """A copy of the sandbox's own python3, set-uid and set-gid root, in /opt."""
    body = (MINIMAL_CACHE / "rootfs" / "usr" / "bin" / "python3.11").read_bytes()
    return entries(
        info("opt", tarfile.DIRTYPE, mode=0o755),
        info("opt/rootpy", mode=0o6755),
        data={"opt/rootpy": body},
    )


@pytest.mark.parametrize("runtime", ["runc", "gvisor"])
def test_a_setuid_root_binary_in_a_layer_does_not_make_a_user_root(agent: AgentProcess, runtime: str) -> None:
    d = put(agent, suid_python())
    assert os.stat(tree(agent, d) / "opt" / "rootpy").st_mode & 0o6000 == 0o6000  # kept as data
    r = agent.create(memory_mb=256, runtime=runtime, chain=pb.TemplateChain(base="minimal", layers=[d]))
    try:
        code = "import os; print(os.getuid(), os.geteuid(), os.getegid())"
        res = agent.exec(r.sandbox_id, "/opt/rootpy", "-c", code, user="nobody", timeout_sec=60)
        assert res.exit_code == 0, res.stderr
        assert res.stdout.split() == [b"65534", b"65534", b"65534"], res.stdout
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))


def test_odd_whiteouts_and_duplicates_install_or_refuse_cleanly(agent: AgentProcess) -> None:
    """What only extraction can apply (an opaque root, a member replacing another, a directory
    after its contents, an aufs `.wh..wh.` entry) installs; nothing is an internal error."""
    cases = {
        "opaque root": entries(info(".wh..wh..opq"), info("f")),
        "opaque apart from its dir": entries(info("d", tarfile.DIRTYPE), info("d/f"), info("d/.wh..wh..opq")),
        "file then dir of the same name": entries(info("x"), info("x", tarfile.DIRTYPE), info("x/y")),
        "dir then file of the same name": entries(info("x", tarfile.DIRTYPE), info("x")),
        "a whiteout of its own file": entries(info("w"), info(".wh.w")),
        "aufs metadata": entries(info(".wh..wh.plnk", tarfile.DIRTYPE), info(".wh..wh.aufs")),
        "file, hard link, file replaced": entries(info("a"), hard("b", "a"), sym("a", "elsewhere")),
    }
    bad = {}
    for name, data in cases.items():
        code, detail = refusal(agent, data)
        if code not in (None, grpc.StatusCode.INVALID_ARGUMENT):
            bad[name] = (code, detail)
        elif code is None:
            agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[digest(data)]))
    assert bad == {}, agent.log_tail(60)
    assert wait_clean(agent) == []


def test_many_empty_files_and_deep_dirs_are_bounded(agent: AgentProcess) -> None:
    """200,000 empty files (a "tar bomb" of headers) and a tree at the depth limit install within
    the call's deadline and are then removable."""
    data = many_zero_files(200_000)
    start = time.monotonic()
    d = put(agent, data, timeout=600)
    took = time.monotonic() - start
    print(f"\n{agent.mode}: 200k empty files ({len(data) >> 20} MiB of tar) installed in {took:.1f} s")  # type: ignore[attr-defined]
    assert len(os.listdir(tree(agent, d))) == 200
    deep = entries(info("a/" * 255 + "f"))
    d2 = put(agent, deep)
    res = agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[d, d2]))
    assert sorted(res.deleted) == sorted([d, d2])
    assert wait_clean(agent) == []


def high_water_mib(a: AgentProcess) -> int:
    assert a.proc is not None
    for line in Path(f"/proc/{a.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) >> 10
    raise AssertionError("no VmHWM")


def test_deep_distinct_paths_do_not_blow_up_the_agents_memory(agent: AgentProcess) -> None:
    """4000 files 250 levels deep, each under its own top directory: an 8 MiB tar. Checking
    names held every level of every path (~130 bytes per byte of tar: 1 GiB here, 4 GiB for a
    32 MiB tar, the agent's and the control plane's scan alike) and extraction created a
    million directories (~4 GiB of directory blocks) for it. Now such a layer is refused early,
    with little held and nothing made."""
    before = high_water_mib(agent)
    data = deep_distinct_dirs(4000)
    code, detail = refusal(agent, data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too many" in detail, (code, detail)
    after = high_water_mib(agent)
    print(f"\n{agent.mode}: agent high-water {before} -> {after} MiB")  # type: ignore[attr-defined]
    assert after - before < 600, (before, after)
    assert wait_clean(agent) == []


def test_an_imported_image_with_such_a_layer_is_refused_by_the_import(tmp_path: Path) -> None:
    """The same tar inside an OCI image layout: the import's own scan (run by the control plane
    on every imported layer) refuses it, holding little, before any agent sees it."""
    image = oci_layout(tmp_path / "image.tar", [deep_distinct_dirs(4000)])
    (tmp_path / "work").mkdir()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    with pytest.raises(LayerError, match="too many"):
        read_image(image, tmp_path / "work")
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10) - before < 600
