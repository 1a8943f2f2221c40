"""Image import through the REST API on a live platform: an OCI image layout and a
``docker save`` tarball, both written here in Python (no registry is reachable), become
templates whose sandboxes have the image's files with its whiteouts applied and its Env,
WorkingDir, User and Entrypoint + Cmd as defaults; an image without python3 and a tar that is
no image are refused.

The images' first layer is a python3 closure taken from the test host's ``minimal`` rootfs
(python3, its standard library and shared libraries, a shell and a few tools), re-owned from
the mapped uid range to 0-based ids as in any image; the second layer adds a user and files,
deletes one (``.wh.``) and makes a directory opaque (``.wh..wh..opq``)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.cp import InProcessCP
from tests.harness.machine import MINIMAL_CACHE
from tests.harness.platform import Platform
from warren.cp.services import tenant_threads

# On the worker's shared platform: its imports are its own team's templates (the bounds test's
# replica of its own, on the same database, signs up a team of its own too).
pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

ROOTFS = MINIMAL_CACHE / "rootfs"
MAPPED_BASE = 1_000_000_000
BINARIES = ("python3", "python3.11", "sh", "dash", "cat", "ls", "env", "id", "whoami", "pwd")
SKIP_STDLIB = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "pydoc_data", "__pycache__"}
CONFIG = {
    "Env": ["PATH=/usr/bin:/bin", "IMG_VAR=from the image"],
    "WorkingDir": "/opt/app",
    "User": "svc",
    "Entrypoint": ["/usr/bin/env"],
    "Cmd": ["python3", "-m", "http.server", "9000"],
}


def _rooted(path: Path, name: str) -> tarfile.TarInfo:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = st.st_mode & 0o7777, int(st.st_mtime)
    info.uid, info.gid = st.st_uid - MAPPED_BASE, st.st_gid - MAPPED_BASE  # 0-based, as in images
    if path.is_symlink():
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif path.is_dir():
        info.type = tarfile.DIRTYPE
    else:
        info.size = st.st_size
    return info


def _closure() -> Iterator[Path]:
    """The rootfs paths the python3 closure needs, parents first."""
    for top in (
        "bin",
        "lib",
        "lib64",
        "sbin",
        "usr",
        "usr/bin",
        "usr/lib",
        "usr/lib64",
        "etc",
        "tmp",
        "root",
    ):
        yield ROOTFS / top
    for name in BINARIES:
        yield ROOTFS / "usr/bin" / name
    yield from sorted((ROOTFS / "usr/lib64").iterdir())
    libs = ROOTFS / "usr/lib/x86_64-linux-gnu"
    yield libs
    yield from sorted(p for p in libs.iterdir() if ".so" in p.name and not p.is_dir())
    stdlib = ROOTFS / "usr/lib/python3.11"
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_STDLIB)
        yield Path(dirpath)
        yield from (Path(dirpath) / f for f in sorted(filenames))
    for name in ("passwd", "group", "nsswitch.conf"):
        yield ROOTFS / "etc" / name


def _add(t: tarfile.TarFile, name: str, data: bytes | None = None, **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    for k, v in fields.items():
        setattr(info, k, v)
    if data is None:
        info.type = fields.get("type", tarfile.DIRTYPE)
        info.mode = fields.get("mode", 0o755)
        t.addfile(info)
    else:
        info.size = len(data)
        info.mode = fields.get("mode", 0o644)
        t.addfile(info, io.BytesIO(data))


def _base_layer(out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for path in _closure():
            info = _rooted(path, path.relative_to(ROOTFS).as_posix())
            if info.isreg():
                with path.open("rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info)
        _add(t, "opt")
        _add(t, "opt/app")
        _add(t, "opt/app/keep.txt", b"kept\n")
        _add(t, "opt/app/gone.txt", b"deleted by the top layer\n")
        _add(t, "opt/old")
        _add(t, "opt/old/hidden.txt", b"hidden by an opaque dir\n")


def _top_layer() -> bytes:
    passwd = (ROOTFS / "etc/passwd").read_bytes() + b"svc:x:1001:1001::/home/svc:/bin/sh\n"
    group = (ROOTFS / "etc/group").read_bytes() + b"svc:x:1001:\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        _add(t, "etc/passwd", passwd)
        _add(t, "etc/group", group)
        _add(t, "home")
        _add(t, "home/svc", uid=1001, gid=1001)
        _add(t, "opt/app/.wh.gone.txt", b"")
        _add(t, "opt/app/added.txt", b"added\n")
        _add(t, "opt/old/.wh..wh..opq", b"")
        _add(t, "opt/old/new.txt", b"new\n")
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config(diff_ids: list[str], config: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        }
    ).encode()


def _member(t: tarfile.TarFile, name: str, data: bytes) -> None:
    _add(t, name, data)


def oci_layout(layers: list[bytes], config: dict[str, Any]) -> bytes:
    """An OCI image layout tarball; the first layer gzipped, the others plain."""
    blobs: dict[str, bytes] = {}
    descs = []
    for i, layer in enumerate(layers):
        blob = gzip.compress(layer, compresslevel=1) if i == 0 else layer
        kind = "tar+gzip" if i == 0 else "tar"
        blobs[_sha(blob)] = blob
        descs.append(
            {
                "mediaType": f"application/vnd.oci.image.layer.v1.{kind}",
                "digest": f"sha256:{_sha(blob)}",
                "size": len(blob),
            }
        )
    cfg = _config([_sha(x) for x in layers], config)
    blobs[_sha(cfg)] = cfg
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{_sha(cfg)}",
                "size": len(cfg),
            },
            "layers": descs,
        }
    ).encode()
    blobs[_sha(manifest)] = manifest
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{_sha(manifest)}",
                "size": len(manifest),
            }
        ],
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _member(t, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _member(t, "index.json", json.dumps(index).encode())
        _add(t, "blobs")
        _add(t, "blobs/sha256")
        for digest, blob in blobs.items():
            _member(t, f"blobs/sha256/{digest}", blob)
    return buf.getvalue()


def docker_save(layers: list[bytes], config: dict[str, Any]) -> bytes:
    cfg = _config([_sha(x) for x in layers], config)
    names = [f"{_sha(layer)}/layer.tar" for layer in layers]
    manifest = [{"Config": f"{_sha(cfg)}.json", "RepoTags": ["img:latest"], "Layers": names}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _member(t, "manifest.json", json.dumps(manifest).encode())
        _member(t, f"{_sha(cfg)}.json", cfg)
        for name, layer in zip(names, layers, strict=True):
            _member(t, name, layer)
    return buf.getvalue()


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    base = tmp_path_factory.mktemp("image") / "base.tar"
    _base_layer(base)
    return [base.read_bytes(), _top_layer()]


@pytest.fixture
async def http(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=300) as client:
        yield client


async def import_image(
    http: httpx.AsyncClient, name: str, image: bytes, tags: list[str] | None = None
) -> httpx.Response:
    data = {"name": name, **({"tags": json.dumps(tags)} if tags else {})}
    return await http.post("/v1/templates/import", data=data, files={"image": ("image.tar", image)})


async def sh(http: httpx.AsyncClient, sandbox: str, command: str) -> dict[str, Any]:
    r = await http.post(f"/v1/sandboxes/{sandbox}/exec", json={"cmd": "/bin/sh", "args": ["-c", command]})
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("kind", ["oci", "docker"])
async def test_an_imported_image_has_its_files_and_defaults(
    http: httpx.AsyncClient, layers: list[bytes], kind: str
) -> None:
    name = f"img-{kind}-{uuid.uuid4().hex[:6]}"
    image = oci_layout(layers, CONFIG) if kind == "oci" else docker_save(layers, CONFIG)
    r = await import_image(http, name, image, tags=["prod"])
    assert r.status_code == 201, r.text
    version = r.json()
    assert version["source"] == "import" and version["base"] == "scratch" and version["version"] == 1
    assert version["tags"] == ["v1", "prod"]
    assert version["layers"] == [_sha(x) for x in layers]  # the uncompressed layers, by digest
    assert version["size_bytes"] == sum(len(x) for x in layers)
    assert version["config"] == {
        "env": {"PATH": "/usr/bin:/bin", "IMG_VAR": "from the image"},
        "workdir": "/opt/app",
        "user": "svc",
        "start_cmd": "/usr/bin/env python3 -m http.server 9000",
        "ready_cmd": "",
        "ready_timeout_sec": 60,
    }
    r = await http.post("/v1/sandboxes", json={"template": f"{name}:prod"})
    assert r.status_code == 201, r.text
    sb = r.json()["id"]
    try:
        out = await sh(
            http,
            sb,
            'pwd; whoami; echo "$IMG_VAR"; ls /opt/app; ls /opt/old; cat /opt/app/keep.txt; '
            'python3 -c "print(6*7)"',
        )
        assert out["exit_code"] == 0, out
        assert out["stdout"].splitlines() == [
            "/opt/app",
            "svc",
            "from the image",
            "added.txt",
            "keep.txt",  # gone.txt whited out
            "new.txt",  # hidden.txt under the opaque directory
            "kept",
            "42",
        ], out
    finally:
        await http.delete(f"/v1/sandboxes/{sb}")
    listed = {t["name"]: t for t in (await http.get("/v1/templates")).json()}
    assert listed[name]["source"] == "import" and listed[name]["tags"] == {"v1": 1, "prod": 1}


async def test_an_image_without_python3_is_refused(http: httpx.AsyncClient) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _add(t, "etc")
        _add(t, "etc/hostname", b"no python here\n")
    r = await import_image(http, f"nopy-{uuid.uuid4().hex[:6]}", oci_layout([buf.getvalue()], {}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "python3_missing", r.text
    assert "python3" in r.json()["error"]["message"]


def _cpu_of(pid: int) -> tuple[float, float]:
    """A process's own CPU seconds and its reaped children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) / os.sysconf("SC_CLK_TCK") for f in fields[11:15])
    return utime + stime, cutime + cstime


async def test_an_image_is_read_outside_the_control_planes_process(
    http: httpx.AsyncClient, platform: Platform
) -> None:
    """Session 25: an image's read (seconds of Python for a layer of many small files, as long
    as the tenant makes it) runs in a child process of its own (layers/image_child.py), not in
    the CP's threads, where it held the GIL against every other request of the process (a push
    of 0.10 s took 1.1 s during eight imports; 0.12 s now)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for i in range(20_000):
            _add(t, f"f{i}", b"")
    image = oci_layout([buf.getvalue()], {})
    own, children = _cpu_of(platform.cp.pid)
    r = await import_image(http, f"many-{uuid.uuid4().hex[:6]}", image)
    assert r.status_code == 400 and r.json()["error"]["code"] == "python3_missing", r.text
    own_after, children_after = _cpu_of(platform.cp.pid)
    # The read: ~0.3 CPU-s, now charged to the CP's reaped children (before: none).
    assert children_after - children >= 0.15, (own_after - own, children_after - children)


async def test_refusals(http: httpx.AsyncClient) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _add(t, "hello.txt", b"not an image\n")
    r = await import_image(http, f"notimg-{uuid.uuid4().hex[:6]}", buf.getvalue())
    assert r.status_code == 400 and "image" in r.json()["error"]["message"], r.text
    r = await import_image(http, "minimal", buf.getvalue())
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved", r.text
    r = await http.post("/v1/templates/import", data={"name": "x"})
    assert r.status_code == 400, r.text
    r = await http.post("/v1/templates/import", json={"name": "x"})
    assert r.status_code == 400, r.text


async def test_imports_are_bounded_per_team_and_in_size(platform: Platform, tmp_path: Path) -> None:
    """A replica with WARREN_IMPORT_MAX_PER_TEAM=2 and WARREN_IMPORT_MAX_IMAGE_MB=1: two imports
    whose uploads are still arriving hold the team's slots (a third is 429 before its body is
    read), their end frees them; an image past the cap is 413; no upload is left on disk."""
    home = tmp_path / "cp"
    cp = await InProcessCP(
        platform.cp.db_url, home, run_workers=False, import_max_per_team=2, import_max_image_mb=1
    ).start()
    try:
        user = await cp.signup()
        boundary = "warren-test-boundary"
        release = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n'
                f"slow-{uuid.uuid4().hex[:6]}\r\n--{boundary}\r\n"
                'Content-Disposition: form-data; name="image"; filename="image.tar"\r\n\r\n'
            ).encode() + b"\0" * 4096
            await release.wait()  # then the body ends, unfinished: the import is refused

        async def upload() -> httpx.Response:
            headers = {**user.h, "Content-Type": f"multipart/form-data; boundary={boundary}"}
            async with httpx.AsyncClient(base_url=cp.url, timeout=60) as own:  # a connection each
                return await own.post("/v1/templates/import", content=stalled(), headers=headers)

        uploads: list[asyncio.Task[httpx.Response]] = []
        for n in (1, 2):  # one at a time, each until its upload is being written to disk
            uploads.append(asyncio.create_task(upload()))
            for _ in range(600):
                if len(list((home / "build-spool").glob(".upload-*"))) == n:
                    break
                await asyncio.sleep(0.05)
            assert len(list((home / "build-spool").glob(".upload-*"))) == n

        async def third() -> httpx.Response:
            files = {"image": ("image.tar", b"not an image")}
            data = {"name": f"third-{uuid.uuid4().hex[:6]}"}
            return await user.req("POST", "/v1/templates/import", data=data, files=files)

        r = await third()
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_imports", r.text

        release.set()
        for done in await asyncio.gather(*uploads):
            assert done.status_code == 400, done.text
        r = await third()
        assert r.status_code == 400, r.text  # admitted again: the image is what is refused

        files = {"image": ("image.tar", b"\0" * (2 << 20))}
        r = await user.req("POST", "/v1/templates/import", data={"name": "too-big"}, files=files)
        assert r.status_code == 413, r.text
        assert not list((home / "build-spool").glob(".upload-*"))
    finally:
        await cp.stop()


async def test_an_import_past_its_time_limit_is_503_and_leaves_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    """WARREN_IMPORT_TIMEOUT_S=1 on a replica whose two turns for tenant work other teams hold:
    the import waits past its limit and fails 503 ``import_timeout``, its upload and work
    directory removed (the spool's sweep reckons with that limit)."""
    home = tmp_path / "cp"
    cp = await InProcessCP(platform.cp.db_url, home, run_workers=False, import_timeout_s=1).start()
    held = tenant_threads._THREADS.turns  # this process's turns: the in-process replica's too
    try:
        user = await cp.signup()
        async with held.turn("another-team"), held.turn("a-third-team"):
            files = {"image": ("image.tar", b"\0" * 4096)}
            r = await user.req("POST", "/v1/templates/import", data={"name": "slow"}, files=files)
        assert r.status_code == 503 and r.json()["error"]["code"] == "import_timeout", r.text
        assert "WARREN_IMPORT_TIMEOUT_S" in r.json()["error"]["message"]
        assert not [p.name for p in (home / "build-spool").iterdir()]
    finally:
        await cp.stop()
