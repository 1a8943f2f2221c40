"""The layer converter in processes of its own (warren.layers.convert_server, driven by
warren.agent.layer_convert): the same bytes and the same refusals as the converter in-process,
its children run as nobody, a converter that stops reading never blocks the agent, and a dead
server is started again."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.unit.layers.tarbuild import d, f, sym, tar_bytes
from warren.agent import layer_convert
from warren.layers import LayerError, LayerStats
from warren.layers.convert_server import result_of
from warren.layers.image_tar import NeedsExtraction, convert_layer

pytestmark = pytest.mark.root  # the children drop to nobody

BASE = 1_000_000_000
LAYER = tar_bytes(
    [d("etc/"), f("etc/a", b"a" * 5000), sym("etc/l", "a"), f("big", os.urandom(300_000)), f("x/.wh.gone")]
)


class Sink:
    """The read end of the pipe a conversion writes into (tar2sqfs' stdin in the agent)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.data = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while chunk := os.read(self.r, 1 << 20):
            self.data += chunk

    def done(self) -> bytes:
        self._thread.join(timeout=60)
        os.close(self.r)
        return bytes(self.data)


def convert_in_child(data: bytes, chunk: int = 64 << 10) -> tuple[LayerStats | None, bytes]:
    sink = Sink()
    conv = layer_convert.Conversion(sink.w, uid_base=BASE, max_bytes=1 << 30, cpu_s=60)
    os.close(sink.w)  # the child holds it now
    try:
        for off in range(0, len(data), chunk):
            conv.put(data[off : off + chunk])
        stats = conv.result()
    finally:
        conv.discard()
    return stats, sink.done()


def convert_here(data: bytes) -> tuple[LayerStats, bytes]:
    r, w = os.pipe()
    out = bytearray()
    reader = threading.Thread(target=lambda: [out.extend(c) for c in iter(lambda: os.read(r, 1 << 20), b"")])
    reader.start()
    try:
        stats = convert_layer(io.BytesIO(data), w, uid_base=BASE, max_bytes=1 << 30)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    return stats, bytes(out)


def test_the_child_writes_the_same_image_tar_as_the_converter_in_process() -> None:
    assert convert_in_child(LAYER) == convert_here(LAYER)
    assert convert_in_child(LAYER, chunk=1) == convert_here(LAYER)  # however the bytes arrive


@pytest.mark.parametrize(
    "entries, error, message",
    [
        ([f("../escape", b"x")], LayerError, "'..' in name"),
        ([f("a", uid=70_000)], LayerError, "outside 0..65535"),
        ([f("a", b"1"), f("a", b"2")], NeedsExtraction, "a second time"),
    ],
)
def test_refusals_come_back_as_the_same_exceptions(
    entries: list[object], error: type[Exception], message: str
) -> None:
    data = tar_bytes(entries)  # type: ignore[arg-type]
    with pytest.raises(error, match=message) as here:
        convert_here(data)
    with pytest.raises(error, match=message) as there:
        convert_in_child(data)
    assert type(there.value) is type(here.value) and str(there.value) == str(here.value)


def test_a_truncated_tar_is_refused() -> None:
    with pytest.raises(LayerError, match="truncated"):
        convert_in_child(LAYER[: len(LAYER) // 2])


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def uids_of(pid: int) -> list[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]


def test_the_child_runs_as_nobody_and_ends_with_its_input() -> None:
    sink = Sink()
    conv = layer_convert.Conversion(sink.w, uid_base=BASE, max_bytes=1 << 30, cpu_s=60)
    os.close(sink.w)
    try:
        conv.put(LAYER[:1024])  # the child waits for the rest
        assert layer_convert._server is not None
        server = layer_convert._server[0].pid
        deadline = time.monotonic() + 30
        while not (kids := children_of(server)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(kids) == 1, kids
        # The child drops right after the fork, before it reads: it then waits for the rest.
        while (uids := uids_of(kids[0])) != ["65534"] * 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert uids == ["65534"] * 4
    finally:
        conv.discard()  # its input ends: it stops, refusing a truncated tar nobody reads
    sink.done()
    deadline = time.monotonic() + 30
    while children_of(server) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert children_of(server) == []


def test_a_converter_that_stopped_reading_never_blocks_the_puts() -> None:
    """A refusal in the first header: the rest of a large layer is still put (and would be
    hashed by the agent), without the pipe filling up and blocking."""
    data = tar_bytes([f("../x", b"y"), f("big", b"z" * (16 << 20))])
    with pytest.raises(LayerError, match=r"'\.\.' in name"):
        convert_in_child(data, chunk=1 << 20)


def test_a_dead_server_is_started_again() -> None:
    layer_convert.warm()
    assert layer_convert._server is not None
    old = layer_convert._server[0]
    os.kill(old.pid, signal.SIGKILL)
    old.wait(timeout=30)
    assert convert_in_child(LAYER) == convert_here(LAYER)
    assert layer_convert._server[0].pid != old.pid


def test_results_that_are_not_a_childs_answer_are_failures() -> None:
    for bad in (b"", b"{", b'{"kind": "ok"}', b'{"kind": "error", "message": "out of memory"}', b"[]"):
        with pytest.raises(OSError, match="the layer converter failed"):
            result_of(bad)
    assert result_of(b'{"kind": "broken_pipe"}') is None
