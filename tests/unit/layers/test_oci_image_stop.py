"""read_image stops when its caller is cancelled (session 24): the stop event is checked at each
member of the tarball, each layer and each chunk, and the layer being written is removed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.harness.stop_after import StopAfter
from tests.unit.layers.images import docker_save, oci_layout
from tests.unit.layers.tarbuild import f, tar_bytes
from warren.layers import read_image
from warren.stoppable import Stopped

MiB = 1 << 20
BIG = 8  # MiB of file data in the layer: eight 1 MiB chunks at least


def _layers() -> list[bytes]:
    return [tar_bytes([f("a", b"x")]), tar_bytes([f("big", bytes(BIG * MiB)), f("after", b"y")])]


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_set_stop_reads_nothing(tmp_path: Path, gzipped: bool) -> None:
    img = oci_layout(tmp_path / "img.tar", _layers(), gzipped=gzipped)
    work = tmp_path / "work"
    work.mkdir()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        read_image(img, work, stop=stop)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_stop_mid_layer_ends_the_read_and_removes_the_partial_layer(tmp_path: Path, gzipped: bool) -> None:
    layers = _layers()
    img = oci_layout(tmp_path / "img.tar", layers, gzipped=gzipped)
    whole = read_image(img, tmp_path)  # the looks a whole read takes, without a stop
    assert [m.size for _, m in whole.layers] == [len(x) for x in layers]
    counting = StopAfter(1 << 30)
    (tmp_path / "count").mkdir()
    read_image(img, tmp_path / "count", stop=counting)
    assert counting.looks > BIG  # at least one look a chunk of the big file
    work = tmp_path / "work"
    work.mkdir()
    stop = StopAfter(counting.looks // 2)
    with pytest.raises(Stopped):
        read_image(img, work, stop=stop)
    assert stop.looks == counting.looks // 2 + 1  # it stopped at the first look after the set
    # The first (small) layer was whole: its file stays for the caller to remove with the work
    # directory; the big one's partial file is gone.
    assert not list(work.glob("*.partial")), list(work.iterdir())
    assert len(list(work.iterdir())) == 1


def test_a_stop_while_indexing_a_docker_save(tmp_path: Path) -> None:
    img = docker_save(tmp_path / "img.tar", _layers())
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(Stopped):
        read_image(img, work, stop=StopAfter(1))  # the tarball's second member
    assert list(work.iterdir()) == []
    assert read_image(img, work, stop=threading.Event()).layers  # an unset event: read whole
