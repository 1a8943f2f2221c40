"""File capabilities against the per-sandbox uid ranges (session 15, task H).

A file capability is the ``security.capability`` xattr; v3 carries a rootid, the host uid of the
namespace root it is valid for (v2: host root). The kernel, measured on this host (6.18): a
canonical lower id-mapped for slot j maps rootid ``1e9`` (canonical root) *and host root* (the id
map keeps ``0 0 1``) to a capability the sandbox's unprivileged users gain at exec; a rootid of a
slot's own range in a lower cannot be mapped, and the exec fails with EOVERFLOW; on the host a
v2 or rootid-0 capability gives a non-root host process real host capabilities. Root in a
sandbox writing a capability stores v3 with rootid = its slot's host base (+ N for a v3 of N).

So the attacker here writes capabilities with every rootid that could matter (host root, host
uid 1, the canonical root, each of the first slots' bases, one past every range) into an imported
image's layer and a build step, as a tenant does; the victims are another team's sandboxes (one
made from the same image bytes: the host installs that digest once for both) and the host. What
holds them (tested): every layer path drops tar xattrs but the overlay's opaque marker (the
extractor, both converters; the image writer refuses any other since session 15), exports write
no xattr, and, should one ever reach a lower, the sandbox's overlay is ``nosuid`` and its
processes ``no_new_privs``: file capabilities are never honoured inside. A setcap'd binary in a
template therefore does not keep its capability in any sandbox (the functional answer).
The unit tests show the checks fail against a converter that keeps xattrs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.machine import MINIMAL_CACHE
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.hostile_tars import END, header, info, pax_record, pax_then
from tests.unit.layers.images import oci_layout
from tests.unit.layers.tarbuild import raw_header
from warren.agent import layer_image
from warren.agent.layer_convert import native_converter
from warren.agent.templates import MAPPED_BASE, uid_base
from warren.layers import extract_layer
from warren.layers.image_tar import convert_layer

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

XATTR = "security.capability"
CAPS = (1 << 10) | (1 << 21)  # NET_BIND_SERVICE, SYS_ADMIN: permitted and effective


def v2(mask: int = CAPS) -> bytes:
    return struct.pack("<IIIII", 0x02000001, mask & 0xFFFFFFFF, 0, mask >> 32, 0)


def v3(rootid: int, mask: int = CAPS) -> bytes:
    return struct.pack("<IIIIII", 0x03000001, mask & 0xFFFFFFFF, 0, mask >> 32, 0, rootid)


ROOTIDS: dict[str, bytes] = {
    "v2": v2(),
    "host-root": v3(0),
    "host-uid-1": v3(1),
    "canonical-root": v3(MAPPED_BASE),
    **{f"slot{n}": v3(uid_base(n)) for n in range(6)},
    "past-every-range": v3(0xFFFFFFFE),
}
CAT = (MINIMAL_CACHE / "rootfs" / "usr" / "bin" / "cat").read_bytes() if MINIMAL_CACHE.exists() else b""
DIRS = ("usr/", "usr/local/", "usr/local/bin/")


def capped_layer(body: bytes = CAT) -> bytes:
    """A layer of copies of ``cat`` (it shows its own capabilities: ``capcat /proc/self/status``),
    each with one of ROOTIDS as a raw PAX xattr record, as a hostile image carries them."""
    out = b""
    for d in DIRS:
        out += header(info(d, tarfile.DIRTYPE, mode=0o755), tarfile.USTAR_FORMAT)
    for name, cap in ROOTIDS.items():
        m = info(f"usr/local/bin/cap-{name}", mode=0o755, size=len(body))
        out += pax_then(pax_record(b"SCHILY.xattr." + XATTR.encode(), cap), m)
        out += body + bytes(-len(body) % 512)
    return out + END


def capabilities_in(root: Path) -> list[str]:
    """Every ``security.capability`` under ``root`` (nothing followed)."""
    found = []
    for d, dirs, files in os.walk(root):
        for n in [*dirs, *files]:
            p = os.path.join(d, n)
            try:
                if XATTR in os.listxattr(p, follow_symlinks=False):
                    found.append(p)
            except OSError:  # an image made without any xattr has no table: EOPNOTSUPP
                pass
    return found


def xattrs_in_tar(data: bytes) -> list[tuple[str, str]]:
    """(member, xattr) for every PAX xattr record of a converter's output tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return [(m.name, k) for m in t.getmembers() for k in m.pax_headers if k.startswith("SCHILY.xattr.")]


# ------------------------------------------------------------------ the codec, no platform


def test_extraction_keeps_no_capability(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    extract_layer(io.BytesIO(capped_layer(b"x")), tree, uid_base=MAPPED_BASE)  # type: ignore[arg-type]
    assert len(os.listdir(tree / "usr/local/bin")) == len(ROOTIDS)
    assert capabilities_in(tree) == []


def test_the_check_fails_against_a_converter_that_keeps_xattrs(tmp_path: Path) -> None:
    """What the tests here would see if extraction applied the tar's xattrs (as `tar --xattrs`
    does): the same extraction, then each member's SCHILY.xattr records set on its file."""
    tree = tmp_path / "tree"
    data = capped_layer(b"x")
    extract_layer(io.BytesIO(data), tree, uid_base=MAPPED_BASE)  # type: ignore[arg-type]
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            for key, value in m.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    os.setxattr(tree / m.name, key[13:], value.encode("utf-8", "surrogateescape"))
    assert len(capabilities_in(tree)) == len(ROOTIDS)


@pytest.mark.parametrize("converter", ["python", "native"])
def test_the_image_converters_write_no_capability(tmp_path: Path, converter: str) -> None:
    src, out = tmp_path / "layer.tar", tmp_path / "image.tar"
    src.write_bytes(capped_layer(b"x"))
    if converter == "python":
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            convert_layer(src, fd, uid_base=MAPPED_BASE)
        finally:
            os.close(fd)
    else:
        path = native_converter()
        assert path is not None, "the compiled converter is not built: run `make setup`"
        with src.open("rb") as fin, out.open("wb") as fout:
            r, w = os.pipe()
            argv = [path, str(fin.fileno()), str(fout.fileno()), str(w), str(MAPPED_BASE), str(1 << 30)]
            subprocess.run(argv, pass_fds=(fin.fileno(), fout.fileno(), w), check=True, timeout=60)
            os.close(w)
            with os.fdopen(r) as res:
                assert '"kind":"ok"' in res.read()
    with tarfile.open(out) as t:
        names = t.getnames()
    assert sum(n.startswith("usr/local/bin/cap-") for n in names) == len(ROOTIDS)
    assert xattrs_in_tar(out.read_bytes()) == []


def _writer_input(key: bytes, value: bytes) -> bytes:
    """The writer's input as a converter writes it (a directory, a PAX record, a file), with one
    xattr record on the file."""
    rec = pax_record(key, value)
    pax = raw_header(b"pax", typ=b"x", size=len(rec)) + rec + bytes(-len(rec) % 512)
    return raw_header(b"d", typ=b"5") + pax + raw_header(b"d/f", size=1) + b"x" + bytes(511) + END


@pytest.mark.parametrize(
    "xattr",
    [("security.capability", v2()), ("security.capability", v3(0)), ("user.note", b"hi"),
     ("trusted.overlay.redirect", b"/etc"), ("trusted.overlay.opaque", b"n")],
    ids=lambda x: f"{x[0]}={x[1][:4]!r}",
)  # fmt: skip
def test_the_image_writer_refuses_an_xattr_no_converter_writes(
    tmp_path: Path, xattr: tuple[str, bytes]
) -> None:
    """A converter taken over writes the writer's input: a capability valid for host root must
    not reach an image (tar2sqfs, and the writer before session 15, packed it)."""
    writer = layer_image.native_writer()
    assert writer is not None, "the image writer is not built: run `make setup`"
    tar = tmp_path / "in.tar"
    tar.write_bytes(_writer_input(b"SCHILY.xattr." + xattr[0].encode(), xattr[1]))
    with tar.open("rb") as f:
        done = subprocess.run([writer, str(tmp_path / "out.sqfs")], stdin=f, capture_output=True, timeout=60)
    assert done.returncode == 1, "packed"
    assert b"an xattr the converter does not write" in done.stderr, done.stderr


def test_the_image_writer_still_packs_the_opaque_marker(tmp_path: Path) -> None:
    writer = layer_image.native_writer()
    assert writer is not None, "the image writer is not built: run `make setup`"
    tar = tmp_path / "in.tar"
    tar.write_bytes(_writer_input(b"SCHILY.xattr.trusted.overlay.opaque", b"y"))
    with tar.open("rb") as f:
        done = subprocess.run([writer, str(tmp_path / "out.sqfs")], stdin=f, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ a live platform

# Run inside: each capped copy's own capabilities when a user runs it, and its xattr as root sees it.
PROBE = r"""
import errno, json, os, subprocess, sys
out = {}
for name in sorted(os.listdir("/usr/local/bin")):
    if not name.startswith("cap-"):
        continue
    p = "/usr/local/bin/" + name
    try:
        x = os.getxattr(p, "security.capability").hex()
    except OSError as e:
        x = errno.errorcode[e.errno]
    r = subprocess.run([p, "/proc/self/status"], user=65534, group=65534, extra_groups=[],
                       capture_output=True, text=True)
    caps = [l.split()[1] for l in r.stdout.splitlines() if l.startswith(("CapPrm", "CapEff"))]
    out[name] = {"xattr": x, "caps": caps, "rc": r.returncode, "err": r.stderr[-200:]}
status = open("/proc/self/status").read()
root = [l for l in open("/proc/self/mountinfo") if l.split()[4] == "/"]
out["_nnp"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")]
out["_root_mount"] = root[0].split()[5] if root else ""
out["_uid_map"] = open("/proc/self/uid_map").read().split()
print(json.dumps(out))
"""
NONE = ["0000000000000000", "0000000000000000"]


def probe(t: Tenant, sb: str) -> dict[str, Any]:
    r = t.w("POST", f"/v1/sandboxes/{sb}/exec", {"cmd": "python3", "args": ["-c", PROBE], "user": "root"})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["exit_code"] == 0, res
    got: dict[str, Any] = json.loads(res["stdout"])
    return got


def assert_no_capability(got: dict[str, Any], names: list[str]) -> None:
    """Every copy present, without its xattr, runs as nobody with no capability."""
    want = {f"cap-{n}": {"xattr": "ENODATA", "caps": NONE, "rc": 0} for n in names}
    seen = {k: {f: v[f] for f in ("xattr", "caps", "rc")} for k, v in got.items() if k.startswith("cap-")}
    assert seen == want, got
    # The walls behind the codec: no_new_privs, and the root overlay nosuid.
    assert got["_nnp"] == ["1"] and "nosuid" in got["_root_mount"].split(","), got


def host_layer_trees(platform: Platform, digest: str) -> list[Path]:
    trees = [a.data_dir / "layers" / digest / "tree" for a in platform.agents]
    return [t for t in trees if t.exists()]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An image: the python3 closure of the image-import test, then the capped copies of cat."""
    from tests.integration.cp.api.test_template_import import _base_layer

    d = tmp_path_factory.mktemp("filecaps")
    _base_layer(d / "base.tar")
    caps = capped_layer()
    path = oci_layout(d / "image.tar", [(d / "base.tar").read_bytes(), caps])
    return path, hashlib.sha256(caps).hexdigest()


def _import(t: Tenant, name: str, image: Path) -> None:
    with t.client(timeout=600) as c, image.open("rb") as f:
        r = c.post("/v1/templates/import", data={"name": name}, files={"image": ("image.tar", f)})
    assert r.status_code == 201, r.text


def test_an_imported_images_capabilities_reach_no_sandbox_and_not_the_host(
    platform: Platform, image: tuple[Path, str]
) -> None:
    path, digest = image
    mallory, victim = signup(platform.url, "filecaps-attacker"), signup(platform.url, "filecaps-victim")
    _import(mallory, "capped", path)
    _import(victim, "same-bytes", path)  # another team, the same layer digest: one install per host
    sbs = [(mallory, mallory.create(template="capped")), (victim, victim.create(template="same-bytes"))]
    try:
        for t, sb in sbs:
            assert_no_capability(probe(t, sb), list(ROOTIDS))
        trees = host_layer_trees(platform, digest)
        assert trees, "the layer is installed on no agent of the platform"
        for tree in trees:
            assert capabilities_in(tree) == []
    finally:
        for t, sb in sbs:
            t.w("DELETE", f"/v1/sandboxes/{sb}")


# The step sets a capability as root in the build sandbox (the kernel writes it v3, rootid = the
# step's host base), shows it, and says which range it ran as.
STEP = (
    "RUN mkdir -p /usr/local/bin && cp /usr/bin/cat /usr/local/bin/cap-set-in-step && python3 -c "
    "\"import os; p='/usr/local/bin/cap-set-in-step'; "
    "os.setxattr(p, 'security.capability', bytes.fromhex('{cap}')); "
    "print('set', os.getxattr(p, 'security.capability').hex(), open('/proc/self/uid_map').read().split())\""
)


def test_a_capability_set_in_a_build_step_reaches_no_sandbox_of_the_template(platform: Platform) -> None:
    """The functional question: ``setcap`` in a template step, then sandboxes of the template in
    other slots. The capability is not kept (exports write no xattr), and could not work there
    anyway (nosuid, no_new_privs)."""
    t = signup(platform.url, "filecaps-builder")
    name = f"setcap-{uuid.uuid4().hex[:6]}"
    spec = "FROM minimal\n" + STEP.format(cap=v2().hex()) + "\n"
    r = t.w("POST", "/v1/templates", {"name": name, "spec": spec})
    assert r.status_code == 202, r.text
    build = _wait_build(t, name, r.json()["build_id"])
    log = t.w("GET", f"/v1/templates/{name}/builds/{build['build_id']}/log").json()["data"]
    assert build["status"] == "ready", (build, log)
    assert "set 01000002" in log, log  # the step itself did set it
    sbs = [t.create(template=name) for _ in range(2)]  # alive together: two slots
    try:
        got = [probe(t, sb) for sb in sbs]
        assert got[0]["_uid_map"] != got[1]["_uid_map"], got
        for g in got:
            assert_no_capability(g, ["set-in-step"])
        version = t.w("GET", f"/v1/templates/{name}").json()["versions"][0]
        for digest in version["layers"]:
            # The exported layer as stored carries no xattr, so no rootid at all.
            stored = platform.cp.home / "store" / "layers" / "sha256" / f"{digest}.tar"
            assert xattrs_in_tar(stored.read_bytes()) == []
            for tree in host_layer_trees(platform, digest):
                assert capabilities_in(tree) == []
    finally:
        for sb in sbs:
            t.w("DELETE", f"/v1/sandboxes/{sb}")


def _wait_build(t: Tenant, name: str, build_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        got: dict[str, Any] = t.w("GET", f"/v1/templates/{name}/builds/{build_id}").json()
        if got["status"] in ("ready", "failed"):
            return got
        time.sleep(0.5)
    raise AssertionError(f"build {build_id} did not end")


# Run as root in a gVisor sandbox: a capability on a copy of cat, as setcap would write it.
GVISOR_SET = (
    "import errno, os, shutil; p = '/usr/local/bin/cap-gvisor'; shutil.copy('/usr/bin/cat', p)\n"
    "try:\n    os.setxattr(p, 'security.capability', bytes.fromhex('{cap}')); print('set')\n"
    "except OSError as e:\n    print('refused', errno.errorcode[e.errno])\n"
)


def test_a_gvisor_snapshot_carries_no_capability(platform: Platform) -> None:
    """A gVisor sandbox's snapshot stays on its host as a copy of its upper (``cp -a``, which
    keeps xattrs): what the sandbox could write there must not come back as a capability.
    (Measured: gVisor refuses the write, ENOTSUP.)"""
    t = signup(platform.url, "filecaps-gvisor")
    r = t.w("POST", "/v1/sandboxes", {"template": "minimal", "runtime": "gvisor"})
    if r.status_code != 201:
        pytest.skip(f"no gVisor here: {r.text[:200]}")
    sb = r.json()["id"]
    new = ""
    try:
        body = {"cmd": "python3", "args": ["-c", GVISOR_SET.format(cap=v2().hex())], "user": "root"}
        res = t.w("POST", f"/v1/sandboxes/{sb}/exec", body).json()
        assert res["exit_code"] == 0, res
        r = t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "gvisor-caps"})
        assert r.status_code == 201, r.text
        for a in platform.agents:
            assert capabilities_in(a.data_dir / "templates") == [], res["stdout"]
        new = t.create(template="gvisor-caps")
        got = probe(t, new)
        # gVisor's file systems take no security.* xattr (the write above is refused ENOTSUP).
        assert got.get("cap-gvisor", {}).get("xattr") in ("ENODATA", "ENOTSUP"), (res["stdout"], got)
        assert got["cap-gvisor"]["caps"] == NONE, got
    finally:
        for s in (sb, new):
            if s:
                t.w("DELETE", f"/v1/sandboxes/{s}")
