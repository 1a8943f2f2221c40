"""A cheap RPC's latency (ListSandboxes) on an extract-mode agent while it installs a layer of
200,000 empty files, split by phase (receiving + checking, extracting), and the agent's own CPU
against its children's. Run as root under `nice -n -19`; say the load average beside the figures.

    nice -n -19 .venv/bin/python bench/layer_extract_stall.py [FILES]
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.agent import AgentProcess
from tests.harness.machine import scratch_dir
from tests.integration.agent.layer_tars import digest, put_requests
from tests.security.hostile_tars import many_zero_files
from warren.rpc import hostagent_pb2 as pb


def show(name: str, xs: list[float]) -> None:
    xs = sorted(xs) or [float("nan")]
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    print(f"{name}: n={len(xs)} p50={q(0.5):.1f} p90={q(0.9):.1f} p99={q(0.99):.1f} max={xs[-1]:.1f} ms")


def main(files: int) -> None:
    data = many_zero_files(files)
    root = scratch_dir("bench-extract-stall")
    a = AgentProcess.standalone(root / "agent", env={"WARREN_AGENT_LAYER_IMAGES": "false"}).start()
    assert a.proc is not None
    pid = a.proc.pid

    def probe() -> float:
        t = time.monotonic()
        a.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=120)
        time.sleep(0.05)
        return (time.monotonic() - t - 0.05) * 1e3

    def cpu() -> tuple[float, float]:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(map(int, f[11:13])) / 100, sum(map(int, f[13:15])) / 100

    try:
        show("idle", [probe() for _ in range(100)])
        took: list[float] = []

        def put() -> None:
            t = time.monotonic()
            a.stub.PutLayer(put_requests(data), timeout=900)
            took.append(time.monotonic() - t)

        th = threading.Thread(target=put)
        c0 = cpu()
        th.start()
        before, during = [], []
        layers = a.data_dir / "layers"
        while th.is_alive():
            (during if any(layers.glob(".tmp-*/tree")) else before).append(probe())
        th.join()
        c1 = cpu()
        show("receiving and checking", before)
        show("extracting", during)
        own, kids = c1[0] - c0[0], c1[1] - c0[1]
        print(f"install {took[0]:.1f} s; agent's own CPU {own:.1f} s, children's {kids:.1f} s")
        a.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[digest(data)]), timeout=600)
    finally:
        a.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
