"""Image tarballs for the import tests: OCI image layouts and `docker save` output, built here
(no registry is reachable) from layer tars made with `tarbuild`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_config(layers: list[bytes], **config: Any) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(layer)}" for layer in layers]},
    }


def outer_tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            t.addfile(ti)
    return path


def oci_layout(
    path: Path,
    layers: list[bytes],
    *,
    gzipped: bool = False,
    config: dict[str, Any] | None = None,
    platforms: list[str] | None = None,
    tamper: bool = False,
) -> Path:
    """An OCI image layout; with `platforms`, an index of that many images (only the
    linux/amd64 one is real, the others point at a missing manifest)."""
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        blobs[f"blobs/sha256/{sha(data)}"] = data
        return f"sha256:{sha(data)}"

    stored = [gzip.compress(layer, mtime=0) if gzipped else layer for layer in layers]
    cfg = json.dumps(config or run_config(layers)).encode()
    media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzipped else "")
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(cfg)},
        "layers": [{"mediaType": media, "digest": put(s), "size": len(s)} for s in stored],
    }
    mdigest = put(json.dumps(manifest).encode())
    if tamper:  # a byte of the first layer blob changed after it was named
        name = f"blobs/sha256/{sha(stored[0])}"
        raw = bytearray(blobs[name])
        raw[-1] ^= 1
        blobs[name] = bytes(raw)
    entries = []
    for plat in platforms or ["linux/amd64"]:
        os_, arch = plat.split("/")
        digest = mdigest if plat == "linux/amd64" else "sha256:" + "0" * 64
        entries.append({"digest": digest, "platform": {"os": os_, "architecture": arch}})
    index = {"schemaVersion": 2, "manifests": entries}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": json.dumps(index).encode()}
    return outer_tar(path, {**files, **blobs})


def docker_save(
    path: Path, layers: list[bytes], *, config: dict[str, Any] | None = None, duplicate_last: bool = False
) -> Path:
    """`docker save` as Docker before 25 wrote it: `<id>/layer.tar`, `<config digest>.json`;
    `duplicate_last` stores the last layer as a symlink to the first, as docker does."""
    cfg = json.dumps(config or run_config(layers)).encode()
    files = {f"{sha(cfg)}.json": cfg}
    links = {}
    names = []
    for i, layer in enumerate(layers):
        name = f"{i:064x}/layer.tar"
        if duplicate_last and i == len(layers) - 1 and i:
            links[name] = f"../{0:064x}/layer.tar"
        else:
            files[name] = layer
        names.append(name)
    manifest = [{"Config": f"{sha(cfg)}.json", "RepoTags": ["img:latest"], "Layers": names}]
    files["manifest.json"] = json.dumps(manifest).encode()
    files["repositories"] = json.dumps({"img": {"latest": f"{len(layers) - 1:064x}"}}).encode()
    return outer_tar(path, files, links)
