"""Image import: an OCI image layout tarball or a `docker save` tarball → uncompressed layer
tars (hashed, scanned) and the image's run defaults.

Everything in the image is hostile: JSON documents are bounded (`MAX_JSON`), so are the layer
count (`MAX_LAYERS`), the total uncompressed bytes (`max_bytes`) and each gzip layer's
expansion (`MAX_RATIO`, over a `RATIO_FLOOR`); digests are checked wherever the format gives
them (OCI blobs by their sha256, `rootfs.diff_ids` against the uncompressed layers, a docker
config named by its digest); each layer is scanned with `scan_layer`, so an image with a layer
the agent would refuse is refused here. Only the linux/amd64 (or first) image of an index, and
the first image of a `docker save`, is read.

Reading takes as long as the image makes it: the control plane runs it in a child process of
its own (layers/image_child.py, session 25), killed when the import is cancelled; the caller
removes the work directory. (It checked a stop event at each member, layer and chunk before,
when it ran in the CP's threads.) A layer that fails a check is removed before the error rises.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.layers.extract import scan_layer
from warren.layers.hashing import CHUNK, HashingWriter, LayerError, LayerMeta
from warren.layers.stats import LayerStats, python3_in_chain
from warren.layers.tarfmt import LNK, REGULAR, SYM, Source, members
from warren.text import text_problem

MAX_JSON = 4 << 20
MAX_LAYERS = 128
MAX_OUTER_MEMBERS = 20_000
MAX_RATIO = 200  # gzip expansion allowed per layer, beyond RATIO_FLOOR
RATIO_FLOOR = 64 << 20
MAX_INDEX_DEPTH = 3
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Image:
    layers: list[tuple[Path, LayerMeta]]  # uncompressed layer tars in the workdir, bottom first
    env: dict[str, str]
    workdir: str
    user: str
    cmd: list[str]
    entrypoint: list[str]
    stats: list[LayerStats] = field(default_factory=list)  # per layer, as `scan_layer` saw it
    has_python3: bool = False  # /usr/bin/python3 exists on top of all the layers


def read_image(path: Path, workdir: Path, *, max_bytes: int = 8 << 30) -> Image:
    """Read the image tarball at `path`, writing its layers (uncompressed) into `workdir`."""
    with _Outer(Path(path)) as outer:
        if outer.has("index.json") and outer.has("oci-layout"):
            config, layer_refs = _oci(outer)
        elif outer.has("manifest.json"):
            config, layer_refs = _docker(outer)
        elif outer.has("repositories"):
            config, layer_refs = _docker_legacy(outer)
        else:
            raise LayerError("not an OCI image layout or a docker save tarball")
        return _Reader(outer, workdir, max_bytes).image(config, layer_refs)


@dataclass
class _LayerRef:
    name: str  # member of the outer tar
    blob_digest: str | None  # sha256 of the stored (possibly compressed) bytes, when known
    diff_id: str | None  # sha256 of the uncompressed tar, when known


class _Outer:
    """The image tarball: an index of its files (symlinks and hard links followed within it)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._files: dict[str, tuple[int, int]] = {}  # name → (offset, size)
        self._links: dict[str, str] = {}
        try:
            self._index(path)
        except BaseException:
            os.close(self.fd)
            raise

    def _index(self, path: Path) -> None:
        head = os.pread(self.fd, 2, 0)
        if head == GZIP_MAGIC:
            raise LayerError("the image tarball is gzip-compressed: upload the plain tar")
        with Source(path, None) as src:
            for i, m in enumerate(members(src)):
                if i >= MAX_OUTER_MEMBERS:
                    raise LayerError(f"the image tarball has more than {MAX_OUTER_MEMBERS} files")
                name = _clean(m.name.decode("utf-8", "replace"))
                if m.type in REGULAR:
                    self._files[name] = (src.pos, m.size)
                elif m.type == SYM:
                    target = m.linkname.decode("utf-8", "replace")
                    self._links[name] = _clean(posixpath.join(posixpath.dirname(name), target))
                elif m.type == LNK:
                    self._links[name] = _clean(m.linkname.decode("utf-8", "replace"))

    def __enter__(self) -> _Outer:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def locate(self, name: str) -> tuple[int, int]:
        name = _clean(name)
        for _ in range(8):
            if name in self._files:
                return self._files[name]
            if name not in self._links:
                break
            name = self._links[name]
        raise LayerError(f"the image tarball has no {name[:200]!r}")

    def has(self, name: str) -> bool:
        try:
            self.locate(name)
        except LayerError:
            return False
        return True

    def json(self, name: str, digest: str | None = None) -> Any:
        offset, size = self.locate(name)
        if size > MAX_JSON:
            raise LayerError(f"{name[:200]!r}: {size} bytes of JSON (over {MAX_JSON})")
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise LayerError(f"{name[:200]!r}: truncated")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise LayerError(f"{name[:200]!r}: content does not match its digest sha256:{digest}")
        try:
            return json.loads(data)
        except ValueError as e:
            raise LayerError(f"{name[:200]!r}: not JSON ({e})") from None


def _clean(name: str) -> str:
    name = posixpath.normpath("/" + name).lstrip("/")
    return name


def _sha256_of(digest: object, what: str) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise LayerError(f"{what}: digest {str(digest)[:80]!r} is not sha256:<hex>")
    hexpart = digest.removeprefix("sha256:")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise LayerError(f"{what}: digest {digest[:80]!r} is not sha256:<hex>")
    return hexpart


def _blob(digest: object, what: str) -> tuple[str, str]:
    hexpart = _sha256_of(digest, what)
    return f"blobs/sha256/{hexpart}", hexpart


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LayerError(f"{what}: expected a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise LayerError(f"{what}: expected a JSON array")
    return value


def _pick_manifest(index: dict[str, Any], what: str) -> dict[str, Any]:
    manifests = [_obj(m, what) for m in _list(index.get("manifests"), f"{what} manifests")]
    if not manifests:
        raise LayerError(f"{what}: no manifests")
    for m in manifests:
        platform = m.get("platform")
        if isinstance(platform, dict) and (platform.get("os"), platform.get("architecture")) == (
            "linux",
            "amd64",
        ):
            return m
    return manifests[0]


def _oci(outer: _Outer) -> tuple[dict[str, Any], list[_LayerRef]]:
    desc = _pick_manifest(_obj(outer.json("index.json"), "index.json"), "index.json")
    for _ in range(MAX_INDEX_DEPTH):
        name, hexpart = _blob(desc.get("digest"), "index.json")
        doc = _obj(outer.json(name, hexpart), name)
        if "manifests" not in doc:  # an image manifest, not a nested index
            break
        desc = _pick_manifest(doc, name)
    else:
        raise LayerError(f"index.json: indexes nested deeper than {MAX_INDEX_DEPTH}")
    config_name, config_hex = _blob(_obj(doc.get("config"), "manifest config").get("digest"), "config")
    config = _obj(outer.json(config_name, config_hex), "image config")
    layers = _list(doc.get("layers"), "manifest layers")
    diff_ids = _diff_ids(config, len(layers))
    refs = []
    for i, layer in enumerate(layers):
        lname, lhex = _blob(_obj(layer, "manifest layer").get("digest"), f"layer {i}")
        refs.append(_LayerRef(lname, lhex, diff_ids[i] if diff_ids else None))
    return config, refs


def _diff_ids(config: dict[str, Any], n: int) -> list[str] | None:
    rootfs = config.get("rootfs")
    if rootfs is None:
        return None
    ids = _list(_obj(rootfs, "config rootfs").get("diff_ids"), "config rootfs.diff_ids")
    if len(ids) != n:
        raise LayerError(f"the config lists {len(ids)} layers (rootfs.diff_ids), the manifest {n}")
    return [_sha256_of(d, "rootfs.diff_ids") for d in ids]


def _docker(outer: _Outer) -> tuple[dict[str, Any], list[_LayerRef]]:
    entries = _list(outer.json("manifest.json"), "manifest.json")
    if not entries:
        raise LayerError("manifest.json lists no image")
    first = _obj(entries[0], "manifest.json entry")
    config_name = first.get("Config")
    if not isinstance(config_name, str):
        raise LayerError("manifest.json: Config is not a file name")
    base = posixpath.basename(config_name).removesuffix(".json")
    named_by_digest = len(base) == 64 and all(c in "0123456789abcdef" for c in base)
    config = _obj(outer.json(config_name, base if named_by_digest else None), "image config")
    layers = _list(first.get("Layers"), "manifest.json Layers")
    diff_ids = _diff_ids(config, len(layers))
    if diff_ids is None:
        raise LayerError("the image config has no rootfs.diff_ids")
    refs = []
    for i, name in enumerate(layers):
        if not isinstance(name, str):
            raise LayerError(f"manifest.json: layer {i} is not a file name")
        refs.append(_LayerRef(name, None, diff_ids[i]))
    return config, refs


def _docker_legacy(outer: _Outer) -> tuple[dict[str, Any], list[_LayerRef]]:
    """Docker before 1.10: `repositories` names the top layer; each `<id>/json` its parent."""
    repos = _obj(outer.json("repositories"), "repositories")
    tags = _obj(next(iter(repos.values()), None), "repositories entry") if repos else {}
    layer_id = next(iter(tags.values()), None)
    ids: list[str] = []
    config: dict[str, Any] = {}
    while layer_id is not None:
        if not isinstance(layer_id, str) or "/" in layer_id or len(ids) >= MAX_LAYERS:
            raise LayerError("repositories: a bad or too long layer chain")
        meta = _obj(outer.json(f"{layer_id}/json"), f"{layer_id}/json")
        if not ids:
            config = {"config": meta.get("config") or {}}
        ids.append(layer_id)
        layer_id = meta.get("parent")
    if not ids:
        raise LayerError("repositories names no image")
    return config, [_LayerRef(f"{i}/layer.tar", None, None) for i in reversed(ids)]


class _Blob:
    """A member of the image tarball as a stream, optionally hashed."""

    def __init__(self, fd: int, offset: int, size: int, *, hashed: bool) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + size
        self._sha = hashlib.sha256() if hashed else None

    def read(self, n: int = -1) -> bytes:
        n = self._end - self._pos if n < 0 else min(n, self._end - self._pos)
        data = os.pread(self._fd, n, self._pos) if n > 0 else b""
        self._pos += len(data)
        if self._sha is not None:
            self._sha.update(data)
        return data

    def hexdigest(self) -> str:
        assert self._sha is not None
        return self._sha.hexdigest()


class _Gunzip:
    """A gzip stream (several members allowed), decompressed at most `n` bytes per read, with
    its expansion bounded."""

    def __init__(self, src: _Blob, limit: int, what: str) -> None:
        self._src, self._limit, self._what = src, limit, what
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""
        self.out = 0

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n < 0 else n
        while True:
            if self._d.eof:
                rest = self._d.unused_data or self._src.read(CHUNK)
                if not rest:
                    return b""
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._tail = rest
            data_in = self._tail or self._src.read(CHUNK)
            if not data_in:
                raise LayerError(f"{self._what}: truncated gzip stream")
            try:
                out = self._d.decompress(data_in, n)
            except zlib.error as e:
                raise LayerError(f"{self._what}: bad gzip data ({e})") from None
            self._tail = self._d.unconsumed_tail
            if out:
                self.out += len(out)
                if self.out > self._limit:
                    raise LayerError(f"{self._what}: expands past {self._limit} bytes (a gzip bomb?)")
                return out


class _Tee:
    """Reads pass through to the layer file (hashed) and count against the image's budget."""

    def __init__(self, src: _Blob | _Gunzip, out: HashingWriter, budget: int, what: str) -> None:
        self._src, self._out, self._budget, self._what = src, out, budget, what

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if self._out.size + len(data) > self._budget:
            raise LayerError(f"{self._what}: the image is over its limit of uncompressed bytes")
        self._out.write(data)
        return data

    def drain(self) -> None:  # bytes after the end-of-archive marker belong to the diff_id too
        while self.read(CHUNK):
            pass


class _Reader:
    def __init__(self, outer: _Outer, workdir: Path, max_bytes: int) -> None:
        self.outer, self.workdir, self.max_bytes = outer, Path(workdir), max_bytes
        self.total = 0

    def image(self, config: dict[str, Any], refs: list[_LayerRef]) -> Image:
        if len(refs) > MAX_LAYERS:
            raise LayerError(f"the image has {len(refs)} layers (over {MAX_LAYERS})")
        run = _obj(config.get("config") or {}, "image config .config")
        layers, stats = [], []
        for i, ref in enumerate(refs):
            path, meta, st = self._layer(i, ref)
            layers.append((path, meta))
            stats.append(st)
        return Image(
            layers=layers,
            env=_env(run.get("Env")),
            workdir=_text(run.get("WorkingDir"), "WorkingDir"),
            user=_text(run.get("User"), "User"),
            cmd=_argv(run.get("Cmd"), "Cmd"),
            entrypoint=_argv(run.get("Entrypoint"), "Entrypoint"),
            stats=stats,
            has_python3=python3_in_chain(stats),
        )

    def _layer(self, i: int, ref: _LayerRef) -> tuple[Path, LayerMeta, LayerStats]:
        what = f"layer {i} ({ref.name[:100]})"
        offset, size = self.outer.locate(ref.name)
        head = os.pread(self.outer.fd, 4, offset)
        if head == ZSTD_MAGIC:
            raise LayerError(f"{what}: zstd-compressed layers are not supported")
        gzipped = head[:2] == GZIP_MAGIC
        blob = _Blob(self.outer.fd, offset, size, hashed=gzipped and ref.blob_digest is not None)
        src: _Blob | _Gunzip = _Gunzip(blob, max(RATIO_FLOOR, MAX_RATIO * size), what) if gzipped else blob
        budget = self.max_bytes - self.total
        tmp = self.workdir / f".layer-{i}.partial"
        try:
            with open(tmp, "xb") as f:
                out = HashingWriter(f)
                tee = _Tee(src, out, budget, what)
                try:
                    st = scan_layer(tee, max_bytes=budget)
                except LayerError as e:
                    if str(e).startswith(what):
                        raise
                    raise LayerError(f"{what}: {e}") from None
                tee.drain()
            meta = out.meta()
            blob_digest = blob.hexdigest() if gzipped and ref.blob_digest else meta.digest
            if ref.blob_digest is not None and blob_digest != ref.blob_digest:
                raise LayerError(f"{what}: the blob does not match its digest sha256:{ref.blob_digest}")
            if ref.diff_id is not None and meta.digest != ref.diff_id:
                raise LayerError(f"{what}: the uncompressed layer does not match its diff_id")
            final = self.workdir / f"{meta.digest}.tar"
            os.replace(tmp, final)  # the same layer twice in an image: one file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.total += meta.size
        return final, meta, st


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LayerError(f"image config {what}: expected a string")
    return _storable(value, what)


def _argv(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LayerError(f"image config {what}: expected a list of strings")
    return [_storable(v, what) for v in value]


def _storable(value: str, what: str) -> str:
    """``value`` as the template's config may keep it (warren/text.py): with a lone surrogate or
    a NUL the import's last write failed, its layers already stored and counted to the team
    (session 25)."""
    if (problem := text_problem(value)) is not None:
        raise LayerError(f"image config {what}: {problem}")
    return value


def _env(value: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in _argv(value, "Env"):
        key, eq, val = item.partition("=")
        if key and eq:
            env[key] = val
    return env
