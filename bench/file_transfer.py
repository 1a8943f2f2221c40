"""File transfers between the CP and an agent over a link with a round trip: the fixed 256 KiB
flow window (session 13) against the growing one (session 14, rpc/flow_window.py).

The CP's transfer code (``cp/services/file_transfer.py``: ``open_read``, ``write``) runs in this
process against a real standalone agent and sandbox; between them a TCP relay process that
delays every chunk by half the round trip each way, bandwidth unbounded
(``tests/harness/delay_relay.py``; ``tc netem`` is not available on this kernel). "fixed" is the
same code with a CP budget of 0 for grown windows: every window stays at 256 KiB. Each figure is
MB/s (10^6 bytes) of one transfer of ``--mib`` MiB, download (the guest's file to this process)
and upload (this process's bytes into the guest's file), with the 1-minute load beside it.

Run as root: ``nice -n -19 .venv/bin/python bench/file_transfer.py [--mib 256] [--reps 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from tests.harness.agent import AgentProcess
from tests.harness.delay_relay import spawn
from tests.harness.machine import scratch_dir
from warren.cp.hosts.agent_client import agent_errors
from warren.cp.hosts.client_pool import HostClient
from warren.cp.services import file_transfer
from warren.rpc.flow_window import Budget

MIB = 1 << 20


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


async def _pieces(total: int) -> AsyncIterator[bytes]:
    data = os.urandom(MIB)
    for _ in range(total // MIB):
        yield data


async def _one(address: str, sid: str, size: int, growing: bool) -> tuple[float, float]:
    """(download MB/s, upload MB/s) of one transfer each way."""
    file_transfer._budget = Budget(64 * MIB, 16 * MIB) if growing else Budget(0, 0)
    channel = grpc.aio.insecure_channel(address, interceptors=agent_errors("h-bench"))
    client = HostClient("h-bench", address, channel, 0)
    try:
        t0 = time.perf_counter()
        got = 0
        async for chunk in await file_transfer.open_read(client, sid, "/tmp/big", "", team="bench"):
            got += len(chunk)
        down = time.perf_counter() - t0
        assert got == size, got
        t0 = time.perf_counter()
        await file_transfer.write(client, sid, "/tmp/up", _pieces(size), "", team="bench")
        up = time.perf_counter() - t0
    finally:
        await channel.close()
    return size / down / 1e6, size / up / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rtts", default="0,5,10", help="added round trips, ms")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/file_transfer.py needs root (a real agent)")
    size = args.mib * MIB
    root = scratch_dir("bench-transfer")
    agent = AgentProcess.standalone(root / "agent").start()
    try:
        sid = agent.create(memory_mb=2048, disk_size_mb=4096).sandbox_id
        out = agent.exec(sid, "/bin/sh", "-c", f"head -c {size} /dev/urandom > /tmp/big", timeout_sec=300)
        assert out.exit_code == 0, out
        print(f"{args.mib} MiB each way, MB/s download / upload (1-minute load at start)")
        print("| added RTT | fixed 256 KiB | growing (to 8 MiB) |")
        print("|---|---|---|")
        for rtt in [float(x) for x in args.rtts.split(",")]:
            with spawn(agent.address, rtt) as relay:
                cells: dict[bool, list[str]] = {False: [], True: []}
                for _ in range(args.reps):
                    for growing in (False, True):  # alternating
                        load = _load()
                        d, u = asyncio.run(_one(relay, sid, size, growing))
                        cells[growing].append(f"{d:.0f} / {u:.0f} ({load})")
                print(f"| {rtt:g} ms | {', '.join(cells[False])} | {', '.join(cells[True])} |", flush=True)
    finally:
        agent.finish()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
