"""Layer fetch: the template store to a host, as a create that lacks a layer does it.

    sudo .venv/bin/python bench/layer_fetch.py [--big-mb 256] [--files 20000] [--runs 3] [--s3] [--extract]
        [--baseline-src DIR] [--packer native|tar2sqfs|both]

Starts one real ``warren agent`` (standalone, 127.0.0.1) and a template store in a temp dir
(with --s3 also a bucket on a local ``moto_server``). Two layers: (a) --big-mb MB of random data
in 16 files; (b) --files small files (~5 KB each) in 200 directories. Per layer and store, the
best and median of --runs, in MB/s of tar bytes:

  store put   ``LayerStore.put`` of the tar (hashed while spooled, fsynced, renamed/uploaded)
  store read  ``LayerStore.open`` read to the end (1 MiB chunks)
  push        ``services.layers.push_layer``: the store's bytes in 1 MiB PutLayer messages to the
              agent, which hashes and checks them, then converts the tar and packs it into a
              squashfs image it loop-mounts (or, with --extract or on a host without a packer,
              extracts it), the layer deleted there first: what a host that lacks a layer
              waits for. Target: >= 200 MB/s.
  CPU ms      the median CPU time per push (ms), of: the CP's side ("cp": this process, which
              reads the store and sends the messages), the agent process itself ("agent": its
              threads), the layer converter's processes ("conv") and the rest of the agent's
              children ("pack": the packer, with its setpriv/prlimit execs); "all" is their sum.
              The children are counted by a cpuacct cgroup (v1) per agent and one per converter
              server; without cgroup v1's cpuacct only "cp" and "agent" are printed.

With ``--baseline-src DIR`` (e.g. ``git archive <commit> src | tar -x -C DIR``) a second agent
runs DIR/src's code beside this tree's, and the push runs alternate between the two (baseline,
then this tree, --runs times), so a before/after comparison shares the machine's load.
``--packer`` picks the agents' packer: the compiled image writer (``native``, where ``make
setup`` built it), ``tar2sqfs``, or ``both``: two agents of this tree, one each, alternated the
same way.

Then the create cost with the layers already on the host: CreateSandbox RPCs straight to the
agent, one at a time, from ``minimal`` and from a chain of both layers (p50/mean of --creates;
target: no more than from minimal), and a first start on a host lacking the chain (push both +
create; target: <= 2 s + its size at 200 MB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.agent import AgentProcess  # noqa: E402
from tests.harness.s3 import MotoServer, set_credentials  # noqa: E402
from warren.agent.layer_image import PACKER_ENV  # noqa: E402
from warren.cp.hosts.agent_client import agent_errors  # noqa: E402
from warren.cp.hosts.client_pool import HostClient  # noqa: E402
from warren.cp.services.layers import push_layer  # noqa: E402
from warren.cp.store import CHUNK, DirectoryStore, LayerStore, S3Store  # noqa: E402
from warren.rpc import hostagent_pb2 as pb  # noqa: E402

MB = 1_000_000
HOST = __import__("uuid").UUID(int=1)


def make_big(path: Path, mb: int) -> None:
    per = mb * MB // 16
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for i in range(16):
            ti = tarfile.TarInfo(f"data/big-{i}.bin")
            ti.size = per
            with open("/dev/urandom", "rb") as rnd:
                t.addfile(ti, _Limited(rnd, per))


class _Limited:
    def __init__(self, f: object, n: int) -> None:
        self._f, self._left = f, n

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._f.read(n)  # type: ignore[attr-defined, no-any-return]


def make_small(path: Path, files: int) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for d in range(200):
            ti = tarfile.TarInfo(f"small/d{d}")
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        for i in range(files):
            data = os.urandom(4000 + i % 2000)
            ti = tarfile.TarInfo(f"small/d{i % 200}/f{i}")
            ti.size = len(data)
            t.addfile(ti, _Bytes(data))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        out, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return out


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


async def best(
    runs: int,
    size: int,
    fn: Callable[[], Awaitable[object]],
    before: Callable[[], Awaitable[object]] | None = None,
) -> tuple[float, float]:
    """The best and the median throughput (MB/s) of ``runs`` timed calls of ``fn``."""
    rates = []
    for _ in range(runs):
        if before is not None:
            await before()
        t = time.perf_counter()
        await fn()
        rates.append(size / MB / (time.perf_counter() - t))
    return max(rates), statistics.median(rates)


async def drain(store: LayerStore, digest: str) -> None:
    async for _chunk in store.open(digest):
        pass


def agent_cpu_ms(pid: int) -> int:
    """CPU time of the agent process itself (its threads; not its children: the converter's
    process and tar2sqfs), in ms, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def own_cpu_ms() -> float:
    """CPU time of this process (the CP's side of a push: store reads, gRPC sends), in ms."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime + ru.ru_stime) * 1000


class CpuMeter:
    """Per-push CPU of an agent and its children: a cpuacct cgroup (v1) for the agent (so its
    tar2sqfs runs, forked later, land in it) and one for its converter server (whose forked
    children convert the layers). Only where cgroup v1's cpuacct is mounted."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str, pid: int) -> None:
        self.pid = pid
        tag = f"warren-bench-{os.getpid()}-{name.replace(' ', '-')}"
        self.groups: dict[str, Path] = {}
        if not (self.ROOT / "cpuacct.usage").exists():
            return
        for part in ("agent", "conv"):
            g = self.ROOT / f"{tag}-{part}"
            g.mkdir(exist_ok=True)
            self.groups[part] = g
        (self.groups["agent"] / "cgroup.procs").write_text(str(pid))
        for child in _children(pid):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"convert_server" in cmd:
                (self.groups["conv"] / "cgroup.procs").write_text(str(child))

    def sample(self) -> dict[str, float]:
        got: dict[str, float] = {"cp": own_cpu_ms(), "agent": agent_cpu_ms(self.pid)}
        for part, g in self.groups.items():
            got[part + "_cg"] = int((g / "cpuacct.usage").read_text()) / 1e6
        return got

    @staticmethod
    def per_push(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """cp, agent and, with the cgroups, conv, pack (the agent's group less the agent) and all."""
        d = {k: after[k] - before[k] for k in after}
        out = {"cp": d["cp"], "agent": d["agent"]}
        if "conv_cg" in d:
            out["conv"] = d["conv_cg"]
            out["pack"] = max(d["agent_cg"] - d["agent"], 0.0)
            out["all"] = d["cp"] + d["agent_cg"] + d["conv_cg"]
        return out

    def close(self) -> None:
        """The groups removed once their processes are gone (the agent stopped)."""
        for g in self.groups.values():
            for pid in (g / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.ROOT / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                g.rmdir()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


async def bench_layer(
    store: LayerStore,
    clients: dict[str, HostClient],
    meters: dict[str, CpuMeter],
    label: str,
    tar: Path,
    runs: int,
) -> str:
    size = tar.stat().st_size
    meta = await store.put(file_chunks(tar), max_bytes=size)
    put, _ = await best(runs, size, lambda: store.put(file_chunks(tar), max_bytes=size))
    read, _ = await best(runs, size, lambda: drain(store, meta.digest))
    rates: dict[str, list[float]] = {name: [] for name in clients}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
    # Whether each agent takes installs in turns (its admission first), as ensure_on_host asks.
    admits = {}
    for name, client in clients.items():
        admits[name] = (await client.stub.HasLayers(pb.HasLayersRequest(), timeout=30)).admits
    for _ in range(runs):  # alternated, so that both see the same load
        for name, client in clients.items():
            await client.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[meta.digest]), timeout=120)
            cpu0 = meters[name].sample()
            t = time.perf_counter()
            await push_layer(store, client, HOST, meta.digest, size, admits=admits[name])
            rates[name].append(size / MB / (time.perf_counter() - t))
            cpu[name].append(CpuMeter.per_push(cpu0, meters[name].sample()))
    for name, got in rates.items():
        parts = cpu[name][0].keys()
        ms = " ".join(f"{k} {statistics.median(c[k] for c in cpu[name]):.0f}" for k in parts)
        print(
            f"  {label:<8} {size / MB:>7.1f} {put:>8.0f} {read:>8.0f} {max(got):>8.0f} "
            f"{statistics.median(got):>10.0f}  {name}: {' '.join(f'{r:.0f}' for r in got)}"
        )
        print(f"  {'':<8} CPU ms per push, median: {ms}")
    return meta.digest


async def bench_store(
    name: str,
    store: LayerStore,
    clients: dict[str, HostClient],
    meters: dict[str, CpuMeter],
    tars: dict[str, Path],
    runs: int,
) -> dict[str, str]:
    print(f"\n{name}: MB/s (best of {runs}; push also its median), load {os.getloadavg()}")
    head = f"{'layer':<8} {'MB':>7} {'put':>8} {'read':>8} {'push':>8} {'push p50':>10}"
    print(f"  {head}  agent: runs")
    digests = {}
    for label, tar in tars.items():
        digests[label] = await bench_layer(store, clients, meters, label, tar, runs)
    print(f"  load after: {os.getloadavg()}")
    return digests


async def time_create(client: HostClient, chain: pb.TemplateChain | None, n: int) -> list[float]:
    times = []
    for _ in range(n):
        req = pb.CreateSandboxRequest(vcpus=1, memory_mb=128, internet=False)
        if chain is not None:
            req.chain.CopyFrom(chain)
        t = time.perf_counter()
        resp = await client.stub.CreateSandbox(req, timeout=300)
        times.append((time.perf_counter() - t) * 1000)
        await client.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=resp.sandbox_id), timeout=120)
    return times


async def bench_create(
    store: LayerStore, client: HostClient, digests: dict[str, str], tars: dict[str, Path], n: int
) -> None:
    chain = pb.TemplateChain(base="minimal", layers=list(digests.values()))
    await time_create(client, None, 2)  # warm both paths
    await time_create(client, chain, 2)
    minimal = await time_create(client, None, n)
    layered = await time_create(client, chain, n)
    print(f"\ncreate, layers on the host (ms, {n} one at a time): p50 / mean")
    print(f"  minimal        {statistics.median(minimal):7.1f} / {statistics.mean(minimal):7.1f}")
    print(
        f"  chain of {len(digests)}     {statistics.median(layered):7.1f} / {statistics.mean(layered):7.1f}"
    )
    total = sum(t.stat().st_size for t in tars.values())
    await client.stub.DeleteLayers(pb.DeleteLayersRequest(digests=list(digests.values())), timeout=120)
    t = time.perf_counter()
    for label, d in digests.items():
        t_push = time.perf_counter()
        await push_layer(store, client, HOST, d)
        print(f"  push {label}: {time.perf_counter() - t_push:.2f} s")
    first = await time_create(client, chain, 1)
    elapsed = time.perf_counter() - t
    target = 2 + total / (200 * MB)
    print(f"first start on a host lacking the chain ({total / MB:.0f} MB): {elapsed:.2f} s "
          f"(create {first[0] / 1000:.2f} s); target <= {target:.2f} s")  # fmt: skip


async def start_agent(root: Path, env: dict[str, str]) -> tuple[AgentProcess, HostClient]:
    agent = await asyncio.to_thread(AgentProcess.standalone(root, env=env).start)
    mode = [line for line in agent.log_tail(400).splitlines() if "event=layer_install_mode" in line]
    print(mode[-1].split("event=", 1)[-1] if mode else "install mode: (not logged)")
    channel = grpc.aio.insecure_channel(
        agent.address,
        options=[("grpc.max_receive_message_length", 128 << 20), ("grpc.max_send_message_length", 128 << 20)],
        interceptors=agent_errors("bench"),
    )
    return agent, HostClient("bench", agent.address, channel, 0)


async def run(args: argparse.Namespace, work: Path) -> None:
    tars = {"big": work / "big.tar", "small": work / "small.tar"}
    if args.big_mb:
        make_big(tars["big"], args.big_mb)
    else:
        del tars["big"]
    make_small(tars["small"], args.files)
    env = {"WARREN_AGENT_LAYER_IMAGES": "false"} if args.extract else {}
    agents: list[AgentProcess] = []
    clients: dict[str, HostClient] = {}
    moto: MotoServer | None = None
    meters: dict[str, CpuMeter] = {}
    try:
        if args.baseline_src:
            src = str(Path(args.baseline_src).resolve() / "src")
            agent, clients["baseline"] = await start_agent(work / "baseline", {**env, "PYTHONPATH": src})
            agents.append(agent)
        if args.packer == "both":
            agent, clients["tar2sqfs"] = await start_agent(work / "tar2sqfs", {**env, PACKER_ENV: "tar2sqfs"})
            agents.append(agent)
        packer = {PACKER_ENV: "tar2sqfs"} if args.packer == "tar2sqfs" else {}
        agent, client = await start_agent(work / "agent", {**env, **packer})
        agents.append(agent)
        clients["this tree" if args.packer != "both" else "native"] = client
        stores: dict[str, LayerStore] = {"directory": DirectoryStore(work / "store")}
        if args.s3:
            set_credentials()
            moto = MotoServer(work / "moto.log").start()
            moto.make_bucket("bench")
            stores["s3 (moto)"] = S3Store("bench", "b", endpoint_url=moto.url, spool_dir=work / "spool")
        digests = {}
        for name, agent in zip(clients, agents, strict=True):
            assert agent.proc is not None
            meters[name] = CpuMeter(name, agent.proc.pid)
        for name, store in stores.items():
            digests = await bench_store(name, store, clients, meters, tars, args.runs)
        if args.creates:
            await bench_create(stores["directory"], client, digests, tars, args.creates)
    finally:
        for c in clients.values():
            await c.channel.close(None)
        for a in agents:
            await asyncio.to_thread(a.stop)
        if moto is not None:
            moto.stop()
        for m in meters.values():
            m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=256)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--creates", type=int, default=10)
    ap.add_argument("--s3", action="store_true", help="also a bucket on a local moto_server")
    ap.add_argument("--extract", action="store_true", help="install by extraction, not as images")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--baseline-src", help="also push to an agent running DIR/src, alternating")
    ap.add_argument("--packer", choices=["native", "tar2sqfs", "both"], default="native")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the agent needs namespaces, cgroups and overlayfs")
    with tempfile.TemporaryDirectory(prefix="warren-layer-fetch-", dir=args.dir) as work:
        Path(work).chmod(0o755)
        asyncio.run(run(args, Path(work)))


if __name__ == "__main__":
    main()
