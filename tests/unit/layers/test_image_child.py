"""An image read in a child process (layers/image_child.py): what the child says is what
read_image made, and what the parent takes from it is checked as hostile."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.harness import orphan
from tests.unit.layers.images import docker_save, outer_tar, run_config, sha
from tests.unit.layers.test_oci_image import BASE_LAYER, DEFAULTS, TOP_LAYER
from warren.layers import read_image
from warren.layers.image_child import image_from_json, image_to_json


def _child(image: Path, work: Path) -> dict[str, Any]:
    work.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "warren.layers.image_child", str(image), str(work), str(1 << 30)]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=True)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_the_childs_image_is_read_images(tmp_path: Path) -> None:
    layers = [BASE_LAYER, TOP_LAYER]
    img = docker_save(tmp_path / "img.tar", layers, config=run_config(layers, **DEFAULTS))
    got = image_from_json(_child(img, tmp_path / "child")["image"], tmp_path / "child")
    (tmp_path / "here").mkdir()
    want = read_image(img, tmp_path / "here")
    assert [(p.name, m) for p, m in got.layers] == [(p.name, m) for p, m in want.layers]
    assert [p.parent for p, _ in got.layers] == [tmp_path / "child"] * 2
    assert got.layers[1][0].read_bytes() == TOP_LAYER
    assert (got.env, got.workdir, got.user, got.cmd, got.entrypoint) == (
        want.env, want.workdir, want.user, want.cmd, want.entrypoint,
    )  # fmt: skip
    assert got.stats == want.stats and got.has_python3 is want.has_python3 is True


def test_the_images_fault_is_an_error_not_an_image(tmp_path: Path) -> None:
    doc = _child(outer_tar(tmp_path / "other.tar", {"hello": b"x"}), tmp_path / "work")
    assert doc == {"error": "not an OCI image layout or a docker save tarball"}


def _doc(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    work = tmp_path / "work"
    work.mkdir()
    img = docker_save(tmp_path / "img.tar", [BASE_LAYER], config=run_config([BASE_LAYER], **DEFAULTS))
    return image_to_json(read_image(img, work)), work


def _lie(doc: dict[str, Any], work: Path, how: str) -> None:
    layer = doc["layers"][0]
    if how == "a-name-outside":
        layer["name"] = "../" + layer["name"]
    elif how == "a-link-to-a-host-file":
        secret = Path("/etc/hostname").read_bytes()
        (work / layer["name"]).unlink()
        os.symlink("/etc/hostname", work / f"{sha(secret)}.tar")
        layer.update(name=f"{sha(secret)}.tar", digest=sha(secret), size=len(secret))
    elif how == "another-size":
        layer["size"] += 1
    elif how == "a-digest-not-hex":
        layer["digest"] = layer["name"] = "x" * 64
    elif how == "too-many-layers":
        doc["layers"] = [layer] * 129
    elif how == "env-not-text":
        doc["env"] = {"A": 1}
    elif how == "a-negative-count":
        doc["stats"][0]["files"] = -1


@pytest.mark.parametrize(
    "how",
    ["a-name-outside", "a-link-to-a-host-file", "another-size", "a-digest-not-hex", "too-many-layers",
     "env-not-text", "a-negative-count"],
)  # fmt: skip
def test_a_child_that_lies_is_refused(tmp_path: Path, how: str) -> None:
    """A child subverted by its image names at most bytes of its own workdir."""
    doc, work = _doc(tmp_path)
    assert image_from_json(doc, work).layers  # as it was: taken
    _lie(doc, work, how)
    with pytest.raises((ValueError, OSError)):
        image_from_json(json.loads(json.dumps(doc)), work)


FILES = 30_000  # a layer of empty files: ~0.5 s of the child's Python to read


def _slow_image(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for i in range(FILES):
            t.addfile(tarfile.TarInfo(f"f{i}"))
    layer = buf.getvalue()
    return docker_save(tmp_path / "img.tar", [layer], config=run_config([layer]))


def test_the_child_dies_with_the_control_plane(tmp_path: Path) -> None:
    """A CP killed outright (here: a parent that exits while its child reads) takes its child
    with it (warren/parent_death.py), which would otherwise go on reading for nobody. The parent
    stops the child mid-read before it exits: without the death signal the child stays, stopped,
    whatever the machine's load; with it the kernel's SIGKILL ends it."""
    image, work = _slow_image(tmp_path), tmp_path / "work"
    work.mkdir()
    args = [str(image), str(work), str(1 << 30), "{pid}"]
    with orphan.orphaned("warren.layers.image_child", args, work / ".layer-0.partial") as child:
        assert orphan.ends(child), "the child outlived its parent"
        assert not list(work.glob("*.tar"))  # it ended mid-read


def test_a_child_whose_parent_died_already_ends_at_once(tmp_path: Path) -> None:
    """Reparented before it could ask for its death signal: the pid it was given is not its
    parent's any more, and it kills itself before reading."""
    image = docker_save(tmp_path / "img.tar", [BASE_LAYER], config=run_config([BASE_LAYER], **DEFAULTS))
    work = tmp_path / "work"
    work.mkdir()
    argv = [sys.executable, "-m", "warren.layers.image_child", str(image), str(work), str(1 << 30), "1"]
    done = subprocess.run(argv, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL and not done.stdout
    assert not list(work.iterdir())
