"""read_image: OCI image layouts and `docker save` tarballs → layer tars and run defaults."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from tests.unit.layers.images import docker_save, oci_layout, outer_tar, run_config, sha
from tests.unit.layers.tarbuild import d, f, raw_header, sym, tar_bytes
from warren.layers import LayerError, digest_file, read_image

BASE_LAYER = tar_bytes(
    [
        *(d("usr/"), d("usr/bin/"), f("usr/bin/python3.11", b"\x7fELF")),
        *(sym("usr/bin/python3", "python3.11"), f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")),
        f("etc/motd", b"hi"),
    ]
)
TOP_LAYER = tar_bytes([f("etc/.wh.motd"), f("app/.wh..wh..opq"), f("app/main.py", b"print(1)\n")])
DEFAULTS = {
    "Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "EMPTY=", "junk"],
    "WorkingDir": "/app",
    "User": "1000:1000",
    "Cmd": ["python3", "main.py"],
    "Entrypoint": ["/bin/sh", "-c"],
}


def _check(image_path: Path, work: Path) -> None:
    image = read_image(image_path, work)
    assert [meta.digest for _, meta in image.layers] == [sha(BASE_LAYER), sha(TOP_LAYER)]
    for path, meta in image.layers:
        assert path.parent == work and digest_file(path) == meta
    assert image.layers[1][0].read_bytes() == TOP_LAYER  # whiteouts kept for the agent to apply
    assert image.env == {"PATH": "/usr/local/bin:/usr/bin", "LANG": "C.UTF-8", "EMPTY": ""}
    assert (image.workdir, image.user) == ("/app", "1000:1000")
    assert (image.cmd, image.entrypoint) == (["python3", "main.py"], ["/bin/sh", "-c"])
    assert image.has_python3
    assert image.stats[1].files == 2  # a whiteout and a file; the opaque marker is an xattr
    assert sorted(p.name for p in work.iterdir()) == sorted(f"{m.digest}.tar" for _, m in image.layers)


@pytest.mark.parametrize("gzipped", [False, True])
def test_an_oci_layout(tmp_path: Path, gzipped: bool) -> None:
    layers = [BASE_LAYER, TOP_LAYER]
    img = oci_layout(tmp_path / "img.tar", layers, gzipped=gzipped, config=run_config(layers, **DEFAULTS))
    (tmp_path / "work").mkdir()
    _check(img, tmp_path / "work")


def test_an_oci_index_picks_linux_amd64(tmp_path: Path) -> None:
    layers = [BASE_LAYER, TOP_LAYER]
    img = oci_layout(
        tmp_path / "img.tar",
        layers,
        config=run_config(layers, **DEFAULTS),
        platforms=["linux/arm64", "linux/amd64", "windows/amd64"],
    )
    (tmp_path / "work").mkdir()
    _check(img, tmp_path / "work")


def test_a_docker_save(tmp_path: Path) -> None:
    layers = [BASE_LAYER, TOP_LAYER]
    img = docker_save(tmp_path / "img.tar", layers, config=run_config(layers, **DEFAULTS))
    (tmp_path / "work").mkdir()
    _check(img, tmp_path / "work")


def test_a_docker_save_with_a_repeated_layer_as_a_symlink(tmp_path: Path) -> None:
    layers = [BASE_LAYER, TOP_LAYER, BASE_LAYER]
    img = docker_save(tmp_path / "img.tar", layers, duplicate_last=True)
    (tmp_path / "work").mkdir()
    image = read_image(img, tmp_path / "work")
    assert [m.digest for _, m in image.layers] == [sha(BASE_LAYER), sha(TOP_LAYER), sha(BASE_LAYER)]
    assert image.layers[0][0] == image.layers[2][0]
    assert (image.env, image.cmd, image.workdir) == ({}, [], "")


def test_a_legacy_docker_save(tmp_path: Path) -> None:
    ids = ["a" * 64, "b" * 64]
    files = {
        "repositories": json.dumps({"img": {"latest": ids[1]}}).encode(),
        f"{ids[0]}/json": json.dumps({"id": ids[0]}).encode(),
        f"{ids[0]}/layer.tar": BASE_LAYER,
        f"{ids[1]}/json": json.dumps({"id": ids[1], "parent": ids[0], "config": DEFAULTS}).encode(),
        f"{ids[1]}/layer.tar": TOP_LAYER,
    }
    (tmp_path / "work").mkdir()
    _check(outer_tar(tmp_path / "img.tar", files), tmp_path / "work")


def test_a_tampered_oci_blob_is_refused(tmp_path: Path) -> None:
    img = oci_layout(tmp_path / "img.tar", [BASE_LAYER, TOP_LAYER], gzipped=True, tamper=True)
    (tmp_path / "work").mkdir()
    with pytest.raises(LayerError, match=r"layer 0.*(digest|gzip)"):
        read_image(img, tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []


def test_a_plain_oci_blob_not_matching_its_name_is_refused(tmp_path: Path) -> None:
    img = oci_layout(tmp_path / "img.tar", [BASE_LAYER], tamper=True)
    (tmp_path / "work").mkdir()
    with pytest.raises(LayerError, match="layer 0"):
        read_image(img, tmp_path / "work")


def test_a_docker_layer_not_matching_its_diff_id_is_refused(tmp_path: Path) -> None:
    config = run_config([BASE_LAYER, BASE_LAYER])  # claims the base layer twice
    img = docker_save(tmp_path / "img.tar", [BASE_LAYER, TOP_LAYER], config=config)
    (tmp_path / "work").mkdir()
    with pytest.raises(LayerError, match=r"layer 1.*diff_id"):
        read_image(img, tmp_path / "work")


def test_a_docker_config_not_matching_its_name_is_refused(tmp_path: Path) -> None:
    cfg = json.dumps(run_config([BASE_LAYER])).encode()
    files = {
        "manifest.json": json.dumps([{"Config": f"{'c' * 64}.json", "Layers": ["l.tar"]}]).encode(),
        f"{'c' * 64}.json": cfg,
        "l.tar": BASE_LAYER,
    }
    (tmp_path / "work").mkdir()
    with pytest.raises(LayerError, match="does not match its digest"):
        read_image(outer_tar(tmp_path / "img.tar", files), tmp_path / "work")


def test_an_image_without_python3(tmp_path: Path) -> None:
    top = tar_bytes([f("usr/bin/.wh.python3")])
    img = oci_layout(tmp_path / "img.tar", [BASE_LAYER, top])
    (tmp_path / "work").mkdir()
    image = read_image(img, tmp_path / "work")
    assert not image.has_python3


def test_a_hostile_layer_inside_an_image_is_refused(tmp_path: Path) -> None:
    img = oci_layout(tmp_path / "img.tar", [tar_bytes([f("../../etc/cron.d/x", b"pwn")])], gzipped=True)
    (tmp_path / "work").mkdir()
    with pytest.raises(LayerError, match=r"layer 0.*'\.\.' in name"):
        read_image(img, tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []


def _gzip_bomb(path: Path) -> Path:
    """80 MiB of zeros in a tar, about 80 KiB gzipped: past 200x and the 64 MiB floor."""
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [z.compress(raw_header(b"zeros", size=80 << 20))]
    zeros = bytes(1 << 20)
    parts += [z.compress(zeros) for _ in range(80)]
    blob = b"".join([*parts, z.compress(bytes(1024)), z.flush()])
    files = {
        "manifest.json": json.dumps([{"Config": "c.json", "Layers": ["l.tar.gz"]}]).encode(),
        "c.json": json.dumps({"rootfs": {"diff_ids": ["sha256:" + "0" * 64]}}).encode(),
        "l.tar.gz": blob,
    }
    return outer_tar(path, files)


def test_limits(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    work = tmp_path / "work"
    big = oci_layout(tmp_path / "big.tar", [tar_bytes([f("a", b"x" * 100_000)])])
    with pytest.raises(LayerError, match="over its limit"):
        read_image(big, work, max_bytes=50_000)

    with pytest.raises(LayerError, match="gzip bomb"):
        read_image(_gzip_bomb(tmp_path / "bomb.tar"), work)

    many = [tar_bytes([f("a")])] * 129
    with pytest.raises(LayerError, match="129 layers"):
        read_image(docker_save(tmp_path / "many.tar", many), work)

    huge_json = {"manifest.json": b"[" + b" " * (5 << 20) + b"]"}
    with pytest.raises(LayerError, match="over 4194304"):
        read_image(outer_tar(tmp_path / "json.tar", huge_json), work)

    zstd = {"manifest.json": json.dumps([{"Config": "c.json", "Layers": ["l"]}]).encode()}
    zstd |= {"c.json": json.dumps(run_config([b""])).encode(), "l": b"\x28\xb5\x2f\xfd" + bytes(600)}
    with pytest.raises(LayerError, match="zstd"):
        read_image(outer_tar(tmp_path / "zstd.tar", zstd), work)

    gz_outer = tmp_path / "outer.tar.gz"
    gz_outer.write_bytes(gzip.compress(docker_save(tmp_path / "d.tar", [BASE_LAYER]).read_bytes()))
    with pytest.raises(LayerError, match="gzip-compressed"):
        read_image(gz_outer, work)

    with pytest.raises(LayerError, match="not an OCI image layout or a docker save"):
        read_image(outer_tar(tmp_path / "other.tar", {"hello": b"x"}), work)
    assert list(work.iterdir()) == []
