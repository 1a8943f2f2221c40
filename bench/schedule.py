"""Scheduling overhead: sandbox creates through the REST API vs. straight to the agents.

    python bench/schedule.py                    # both layouts, one after the other (root)
    python bench/schedule.py --layout separate --n 100 --rounds 3
    python bench/schedule.py --layout shared --cp-workers 2     # CP as `warren cp --workers 2`
    python bench/schedule.py --layout separate --cp-cpus 4 --cp-workers 4   # on a bigger machine

Starts an embedded PostgreSQL, one control-plane process (uvicorn), and three real
``warren agent`` processes on 127.0.0.2-.4 registered through the API. Then, per round:

  direct  N concurrent CreateSandbox RPCs spread round-robin over the three agents, over the same
          mTLS channels the CP uses (its CA, its client certificate);
  via CP  N concurrent ``POST /v1/sandboxes`` (API key) — auth, template resolution, scheduling,
          the DB statements and the same RPC.

Each sandbox is destroyed between phases. It prints p50/p99/mean end-to-end latency of each
side by side and their difference — the CP's overhead, target p50 <= 15 ms — and the CP's own
time per request (end to end minus the agent RPC as timed by the CP, from ``Server-Timing``,
so it includes waiting behind the other requests in the CP's event loop). The same again one
create at a time shows the unloaded overhead. Per round it prints the p50 difference with the
mean and standard deviation over rounds: the spread between identical bursts is the resolution
of the end-to-end comparison on this machine. Last, the floor: a burst of N of the API's
cheapest authenticated request (GET of an unknown sandbox: HTTP, the API-key check and one
statement), which bounds from below what the CP's own time in a burst of creates can be.

Two layouts, each in its own run of everything:

  separate  the CP, PostgreSQL and this load generator pinned to the first --cp-cpus CPUs (CPU
            0 by default), the agents (and every runc and sandbox process they start) to the
            other CPUs. This is the deployed shape —
            hosts are other machines — and what the target is about: the agents get the same
            CPUs with and without the CP in front of them.
  shared    everything on every CPU, as one machine running the whole platform (`warren up`).
            On a 2-core machine the agents saturate both cores during a burst, so every
            millisecond of CP and PostgreSQL CPU lands on the agents' critical path too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.agent import AgentProcess  # noqa: E402
from warren import ids  # noqa: E402
from warren.cp.hosts.client_pool import DEFAULT_TIMEOUT_S, HostClientPool  # noqa: E402
from warren.cp.security.ca import CertificateAuthority  # noqa: E402
from warren.rpc import hostagent_pb2 as pb  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def control_plane(
    home: Path, workers: int = 1, prefix: Sequence[str] = (), start_timeout_s: float = 30
) -> Iterator[tuple[str, str, int]]:
    """The embedded PostgreSQL, migrated, and one uvicorn CP on it: (its URL, the database URL,
    its pid). ``prefix`` runs the CP under another program (bench/cp_create.py: callgrind)."""
    from warren.cp.db import migrate
    from warren.cp.db.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(home, port=0, fast=True)
    pg.start()
    try:
        migrate.upgrade(pg.url)
        port = free_port()
        env = {
            **os.environ,
            "WARREN_HOME": str(home),
            # As `warren up` runs it: the embedded server over its unix socket, default pool.
            "WARREN_DATABASE_URL": pg.socket_url,
            "WARREN_JWT_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
            "WARREN_MONITOR_INTERVAL_S": "3600",
            "WARREN_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # One team drives the whole load: the per-team request limit is policy, not capacity.
            "WARREN_TEAM_RATE_LIMIT_PER_S": os.environ.get("WARREN_TEAM_RATE_LIMIT_PER_S", "0"),
            # Nor are its quotas, and the three agents share one machine that each reports whole:
            # the capacity check runs (its cost is measured) with room for every burst.
            "WARREN_QUOTA_SANDBOXES": "100000",
            "WARREN_QUOTA_VCPUS": "100000",
            "WARREN_QUOTA_MEMORY_MB": "100000000",
            "WARREN_OVERCOMMIT_CPU": "1000",
            "WARREN_OVERCOMMIT_MEMORY": "100",
        }
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "warren.cp.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            # Connections sit idle while 100 creates queue on the agents; uvicorn's 5 s default
            # would close them under the client's feet.
            "--timeout-keep-alive",
            "120",
        ]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401

            cmd += ["--loop", "uvloop"]
        proc = subprocess.Popen([*prefix, *cmd], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + start_timeout_s
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the control plane did not start")
                time.sleep(0.1)
            yield url, pg.url, proc.pid
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        pg.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live children (uvicorn workers) have used."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for p in [pid, *map(int, children)]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


AGENT_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


async def setup(
    url: str,
    database_url: str,
    root: Path,
    agent_cpus: set[int] | None,
    heartbeat_s: str = "30",
    ips: tuple[str, ...] = AGENT_IPS,
) -> tuple[str, list[AgentProcess], str]:
    import sqlalchemy as sa

    from warren.cp.db.engine import make_engine

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        r = await http.post(
            "/v1/auth/signup", json={"email": email, "password": "bench-password-1", "name": "B"}
        )
        r.raise_for_status()
        body = r.json()
        engine = make_engine(database_url)
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE users SET is_admin = true WHERE id = :id"),
                {"id": ids.parse_id(ids.Kind.USER, body["user_id"])},
            )
        await engine.dispose()
        auth = {"Authorization": f"Bearer {body['token']}"}
        agents = []
        for i, ip in enumerate(ips):
            r = await http.post("/v1/hosts", json={"type": "regular"}, headers=auth)
            r.raise_for_status()
            # The real heartbeat interval (30 s): the tests' 1 s would charge the CP 3 beats a second.
            agent = AgentProcess.registered(
                ip, root / f"agent{i}", url, cpus=agent_cpus, heartbeat_s=heartbeat_s
            )
            agents.append(await agent.astart(r.json()["registration_token"]))
        r = await http.post("/v1/api-keys", json={"name": "bench"}, headers=auth)
        r.raise_for_status()
        return r.json()["key"], agents, body["team_id"]


class Conn:
    """One keep-alive HTTP/1.1 connection to the CP. A raw asyncio client on purpose: with httpx,
    100 concurrent requests queue for seconds in the client's own pool and parser before they
    are even written, which the CP's overhead would otherwise be charged with."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {self.key}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        data = await self.reader.readexactly(length) if length else b""
        return int(lines[0][9:12]), headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_conns(u: httpx.URL, key: str, n: int) -> list[Conn]:
    conns = [Conn(u.host, u.port or 80, key) for _ in range(n)]
    await asyncio.gather(*(c.open() for c in conns))
    # The kernel completes the handshakes; let the CP's loop accept them before the burst.
    await asyncio.sleep(0.2)
    return conns


async def floor_burst(url: str, key: str, n: int, path: str, expect: int) -> list[float]:
    """N concurrent GETs of ``path``: the same burst of a request that does next to nothing, to
    show what any burst of N costs the CP on its CPU before a create's own work."""
    conns = await open_conns(httpx.URL(url), key, n)

    async def one(c: Conn) -> float:
        t0 = time.perf_counter()
        status, _, data = await c.request("GET", path)
        if status != expect:
            raise RuntimeError(f"GET {path} -> {status}: {data[:300]!r}")
        return time.perf_counter() - t0

    try:
        return list(await asyncio.gather(*(one(c) for c in conns)))
    finally:
        for c in conns:
            c.close()


async def via_cp(
    url: str, key: str, n: int, *, cp_pid: int, concurrent: bool = True
) -> tuple[list[float], list[float], float, float]:
    """End-to-end latencies (from writing the request to reading the whole response), per
    request the CP's own share (end-to-end minus the agent RPC as the CP timed it,
    ``Server-Timing: agent;dur=…``), and the CP process's CPU seconds spent on the creates and on
    the destroys."""
    u = httpx.URL(url)
    # Open the connections first so the measurement does not include TCP setup.
    conns = await open_conns(u, key, n if concurrent else 1)
    try:
        cpu0 = cpu_seconds(cp_pid)

        async def one(c: Conn) -> tuple[float, float, str]:
            t0 = time.perf_counter()
            status, headers, data = await c.request("POST", "/v1/sandboxes", b'{"timeout_sec": 0}')
            dt = time.perf_counter() - t0
            if status != 201:
                raise RuntimeError(f"create -> {status}: {data[:300]!r}")
            agent_ms = float(headers["server-timing"].split("dur=")[1])
            return dt, dt - agent_ms / 1000, json.loads(data)["id"]

        if concurrent:
            res = await asyncio.gather(*(one(c) for c in conns))
        else:
            res = [await one(conns[0]) for _ in range(n)]
        cpu1 = cpu_seconds(cp_pid)

        async def destroy(c: Conn, sid: str) -> None:
            status, _, data = await c.request("DELETE", f"/v1/sandboxes/{sid}")
            if status != 204:
                raise RuntimeError(f"destroy -> {status}: {data[:300]!r}")

        if concurrent:
            await asyncio.gather(*(destroy(c, s) for c, (_, _, s) in zip(conns, res, strict=True)))
        else:
            for _, _, s in res:
                await destroy(conns[0], s)
        cpu2 = cpu_seconds(cp_pid)
    finally:
        for c in conns:
            c.close()
    return [d for d, _, _ in res], [o for _, o, _ in res], cpu1 - cpu0, cpu2 - cpu1


async def direct(
    pool: HostClientPool, agents: list[AgentProcess], n: int, *, concurrent: bool = True
) -> list[float]:
    clients = [pool.get_for(a.host_uuid, a.address) for a in agents]
    for c in clients:  # connect first, as the CP's pool would already be connected
        await c.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=30)
    zero = str(uuid.UUID(int=0))

    async def one(i: int) -> tuple[float, str]:
        sid = ids.sandbox_id(ids.new_uuid())
        req = pb.CreateSandboxRequest(
            sandbox_id=sid,
            template="minimal",
            vcpus=1,
            memory_mb=512,
            timeout_sec=0,
            disk_size_mb=5120,
            team_id=zero,
            template_id=zero,
            internet=True,
        )
        t0 = time.perf_counter()
        await clients[i % len(clients)].stub.CreateSandbox(req, timeout=DEFAULT_TIMEOUT_S)
        return time.perf_counter() - t0, sid

    res = (
        await asyncio.gather(*(one(i) for i in range(n))) if concurrent else [await one(i) for i in range(n)]
    )
    await asyncio.gather(
        *(
            clients[i % len(clients)].stub.DestroySandbox(
                pb.DestroySandboxRequest(sandbox_id=s), timeout=DEFAULT_TIMEOUT_S
            )
            for i, (_, s) in enumerate(res)
        )
    )
    return [d for d, _ in res]


def report(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 50) * 1000, "p99": pct(xs, 99) * 1000, "mean": statistics.fmean(xs) * 1000}


def row(label: str, r: dict[str, float]) -> str:
    return f"{label:34}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['mean']:>9.1f}"


async def main_async(args: argparse.Namespace, agent_cpus: set[int] | None) -> None:
    with tempfile.TemporaryDirectory(prefix="warren-bench-sched-", ignore_cleanup_errors=True) as d:
        home = Path(d)
        os.chmod(home, 0o755)
        with control_plane(home, args.cp_workers) as (url, database_url, cp_pid):
            key, agents, _ = await setup(url, database_url, home / "agents", agent_cpus)
            pool = HostClientPool(CertificateAuthority.load_or_create(home / "ca"))
            try:
                # Warm up both paths (template caches, DB pool, channels).
                await via_cp(url, key, 6, cp_pid=cp_pid)
                await direct(pool, agents, 6)
                print(f"{'':34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
                for label, n, rounds, concurrent in (
                    (f"{args.n} concurrent x {args.rounds}", args.n, args.rounds, True),
                    (f"one at a time x {args.sequential}", args.sequential, 1, False),
                ):
                    cp_lat: list[float] = []
                    cp_own: list[float] = []
                    direct_lat: list[float] = []
                    cpu_create = cpu_destroy = 0.0
                    per_round: list[float] = []
                    for r in range(rounds):
                        # Alternate which side goes first, so neither always meets a host
                        # just warmed (or just cluttered) by the other.
                        if r % 2 == 0:
                            d_lat = await direct(pool, agents, n, concurrent=concurrent)
                        lat, own, c_create, c_destroy = await via_cp(
                            url, key, n, cp_pid=cp_pid, concurrent=concurrent
                        )
                        if r % 2 == 1:
                            d_lat = await direct(pool, agents, n, concurrent=concurrent)
                        per_round.append((pct(lat, 50) - pct(d_lat, 50)) * 1000)
                        direct_lat += d_lat
                        cpu_create += c_create
                        cpu_destroy += c_destroy
                        cp_lat += lat
                        cp_own += own
                    a, b, o = report(direct_lat), report(cp_lat), report(cp_own)
                    print(f"{label} (3 agents)")
                    print(row("  direct RPC to the agents", a))
                    print(row("  via CP (REST, end to end)", b))
                    overhead = {k: b[k] - a[k] for k in a}
                    print(row("  CP overhead (via CP - direct)", overhead) + "   (target p50 <= 15 ms)")
                    print(row("  CP's own time per request", o))
                    if rounds > 1:
                        spread = ", ".join(f"{x:+.0f}" for x in per_round)
                        mean, sd = statistics.fmean(per_round), statistics.stdev(per_round)
                        print(f"  overhead p50 per round (ms): {spread}  (mean {mean:+.0f}, sd {sd:.0f})")
                    k = n * rounds
                    print(
                        f"  CP process CPU per create+destroy: {(cpu_create + cpu_destroy) / k * 1000:.1f} ms"
                        f" (create {cpu_create / k * 1000:.1f}, destroy {cpu_destroy / k * 1000:.1f})"
                    )
                # The floor: a burst of the API's cheapest authenticated request on the same CP.
                missing = f"/v1/sandboxes/{ids.sandbox_id(uuid.UUID(int=1))}"
                await floor_burst(url, key, args.n, missing, 404)  # warm-up, not measured
                lat = []
                for _ in range(args.rounds):
                    lat += await floor_burst(url, key, args.n, missing, 404)
                print(f"{args.n} concurrent GET of an unknown sandbox x {args.rounds} (the floor: HTTP, the")
                print(row("  API-key check and one statement)", report(lat)))
            finally:
                await asyncio.gather(*(a.destroy_all_over(pool) for a in agents))
                await pool.close()
                await asyncio.gather(*(a.astop() for a in agents))


LAYOUTS = {
    "separate": "control plane, PostgreSQL and load generator on the first --cp-cpus CPUs, the "
    "agents and their sandboxes on the others (as deployed: agents run on their own machines)",
    "shared": "everything on every CPU (one machine running the whole platform, as `warren up`)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="concurrent creates per phase")
    ap.add_argument("--rounds", type=int, default=4, help="bursts per side (alternating which goes first)")
    ap.add_argument("--sequential", type=int, default=30, help="creates one at a time (unloaded overhead)")
    ap.add_argument(
        "--cp-workers",
        type=int,
        default=1,
        help="control-plane processes (as `warren cp --workers`); with 'separate' they share the CP's CPUs",
    )
    ap.add_argument(
        "--cp-cpus",
        type=int,
        default=1,
        help="with 'separate': CPUs for the CP, PostgreSQL and the load generator (the rest go to "
        "the agents); give it the cores a real control-plane machine would have",
    )
    ap.add_argument(
        "--layout",
        choices=[*LAYOUTS, "both"],
        default="both",
        help="where the processes run (default: both, one after the other)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/schedule.py runs real agents: run it as root")
    cpus = sorted(os.sched_getaffinity(0))
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    if args.cp_cpus < 1:
        sys.exit("--cp-cpus must be at least 1")
    if "separate" in layouts and len(cpus) <= args.cp_cpus:
        print(f"layout 'separate' needs more than --cp-cpus ({args.cp_cpus}) CPUs; running 'shared' only")
        layouts = ["shared"]
    for i, layout in enumerate(layouts):
        if i:
            print()
        workers = f", {args.cp_workers} CP processes" if args.cp_workers > 1 else ""
        if layout == "separate" and args.cp_cpus > 1:
            workers += f", {args.cp_cpus} CPUs for the CP side"
        print(f"== layout {layout}{workers}: {LAYOUTS[layout]}")
        # Each layout in a fresh process: CPU affinity is per thread, and threads started by a
        # previous layout (gRPC's, asyncio's) would keep the old mask.
        cmd = [sys.executable, __file__, "--n", str(args.n), "--rounds", str(args.rounds),
               "--sequential", str(args.sequential), "--cp-workers", str(args.cp_workers),
               "--cp-cpus", str(args.cp_cpus),
               "--run-layout", layout]  # fmt: skip
        subprocess.run(cmd, check=True)


def run_layout() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--sequential", type=int)
    ap.add_argument("--cp-workers", type=int)
    ap.add_argument("--cp-cpus", type=int)
    ap.add_argument("--run-layout", choices=list(LAYOUTS))
    args = ap.parse_args()
    agent_cpus = None
    if args.run_layout == "separate":
        cpus = sorted(os.sched_getaffinity(0))
        # Before anything starts a thread or a child: PostgreSQL and the CP inherit this mask.
        os.sched_setaffinity(0, set(cpus[: args.cp_cpus]))
        agent_cpus = set(cpus[args.cp_cpus :])
    asyncio.run(main_async(args, agent_cpus))


if __name__ == "__main__":
    if "--run-layout" in sys.argv:
        run_layout()
    else:
        main()
