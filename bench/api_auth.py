"""Authenticated-read and login throughput of one control-plane process.

    python bench/api_auth.py                      # starts PostgreSQL + one CP, then measures
    python bench/api_auth.py --url http://HOST:P  # measures a CP that is already running
    python bench/api_auth.py --database-url postgresql://…   # use this (empty or migrated) DB
    python bench/api_auth.py --reads-only         # the two read scenarios only (A/B runs)

Scenarios, each with ``--clients`` concurrent keep-alive connections for ``--duration`` s:
  api-key read   GET /v1/sandboxes            (X-API-Key: key lookup + last_used, list query)
  jwt team read  GET /v1/teams/{id}           (JWT verify + membership re-check + team, members)
  login          POST /v1/auth/login          (argon2id verify in a worker thread)
  reads+logins   the API-key read on clients-2 connections while 2 connections log in non-stop:
                 shows that hashing does not stall other requests.

Target (DESIGN, issue 2): >= 800 authenticated reads/s at p99 <= 25 ms with 16 clients on a
2-core machine, one CP process. The load generator shares the machine, so it is a raw asyncio
HTTP/1.1 client (no HTTP library) to leave the CPU to the server.
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
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu: float | None = None  # the CP process's CPU seconds during the scenario (local CP only)

    def row(self) -> str:
        lat = sorted(self.latencies)
        n = len(lat)
        if not n:
            return f"{self.name:<26} {'-':>9} {'-':>9} {'-':>9} {'-':>8} errors={self.errors}"
        p50 = lat[n // 2] * 1000
        p99 = lat[min(n - 1, int(n * 0.99))] * 1000
        rps = n / self.elapsed
        cpu = f"{self.cpu / n * 1000:>8.3f}ms" if self.cpu is not None else f"{'-':>10}"
        return f"{self.name:<26} {rps:>9.0f} {p50:>8.2f}ms {p99:>8.2f}ms {cpu} {n:>8} errors={self.errors}"


class Conn:
    """One keep-alive HTTP/1.1 connection; just enough protocol for JSON responses."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time a (local) process has used so far."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    host: str, port: int, name: str, raw: bytes, ok: int, clients: int, duration: float
) -> Result:
    res = Result(name)
    stop_at = time.perf_counter() + duration

    async def one() -> None:
        c = Conn(host, port)
        await c.open()
        try:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                status, _ = await c.request(raw)
                res.latencies.append(time.perf_counter() - t)
                if status != ok:
                    res.errors += 1
        finally:
            c.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    res.elapsed = time.perf_counter() - started
    return res


async def call(
    host: str, port: int, method: str, path: str, headers: dict[str, str], body: object = None
) -> object:
    c = Conn(host, port)
    await c.open()
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        status, data = await c.request(build(method, path, f"{host}:{port}", headers, payload))
    finally:
        c.close()
    if status >= 300:
        raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
    return json.loads(data) if data else None


async def timed(pid: int | None, coro: Awaitable[Result]) -> Result:
    """Run one scenario and record the CP's CPU time it cost."""
    before = cpu_seconds(pid)
    res = await coro
    after = cpu_seconds(pid)
    if before is not None and after is not None:
        res.cpu = after - before
    return res


async def bench(
    url: str, clients: int, duration: float, pid: int | None = None, reads_only: bool = False
) -> list[Result]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    hp = f"{host}:{port}"
    email = f"bench-{uuid.uuid4().hex[:10]}@bench.test"
    password = "bench password 1"
    signup = await call(
        host, port, "POST", "/v1/auth/signup", {}, {"email": email, "password": password, "name": "Bench"}
    )
    assert isinstance(signup, dict)
    jwt_h = {"Authorization": f"Bearer {signup['token']}"}
    key = await call(host, port, "POST", "/v1/api-keys", jwt_h, {"name": "bench"})
    assert isinstance(key, dict)
    key_h = {"X-API-Key": key["key"]}

    api_read = build("GET", "/v1/sandboxes", hp, key_h)
    jwt_read = build("GET", f"/v1/teams/{signup['team_id']}", hp, jwt_h)
    login = build(
        "POST", "/v1/auth/login", hp, {}, json.dumps({"email": email, "password": password}).encode()
    )

    # warm up connection pools, prepared statements and code paths
    await drive(host, port, "warmup", api_read, 200, clients, 1.0)
    await drive(host, port, "warmup", jwt_read, 200, clients, 1.0)

    results = [
        await timed(pid, drive(host, port, "api-key read", api_read, 200, clients, duration)),
        await timed(pid, drive(host, port, "jwt team read", jwt_read, 200, clients, duration)),
    ]
    if reads_only:
        return results
    results.append(await timed(pid, drive(host, port, "login", login, 200, clients, duration)))
    mixed_reads, mixed_logins = await asyncio.gather(
        drive(host, port, "api-key read during logins", api_read, 200, max(1, clients - 2), duration),
        drive(host, port, "login (2 conns, concurrent)", login, 200, 2, duration),
    )
    return [*results, mixed_reads, mixed_logins]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_schema(database_url: str) -> None:
    """Bring the database to the current schema with the project's migrations."""
    from warren.cp.db import migrate

    migrate.upgrade(database_url)


@contextlib.contextmanager
def local_cp(database_url: str | None) -> Iterator[tuple[str, int]]:
    """A PostgreSQL (embedded unless a URL is given) and one CP process under uvicorn."""
    with contextlib.ExitStack() as stack:
        if database_url is None:
            from warren.cp.db.embedded import EmbeddedPostgres

            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="warren-bench-")))
            os.chmod(home, 0o755)  # the unprivileged postgres service user must traverse it
            pg = EmbeddedPostgres(home, port=0)
            pg.start()
            stack.callback(pg.stop)
            database_url = pg.url
        prepare_schema(database_url)
        port = free_port()
        env = {
            **os.environ,
            "WARREN_DATABASE_URL": database_url,
            "WARREN_JWT_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
            "WARREN_RUN_WORKERS": "false",
            "WARREN_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # Abuse limits are policy, not capacity: the login scenarios log one account in
            # non-stop. The team bucket runs (its cost is measured) but never empties.
            "WARREN_LOGIN_LIMIT_PER_ACCOUNT": os.environ.get("WARREN_LOGIN_LIMIT_PER_ACCOUNT", "0"),
            "WARREN_LOGIN_LIMIT_PER_ADDRESS": os.environ.get("WARREN_LOGIN_LIMIT_PER_ADDRESS", "0"),
            "WARREN_TEAM_RATE_LIMIT_PER_S": os.environ.get("WARREN_TEAM_RATE_LIMIT_PER_S", "1000000000"),
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
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, env=env)
        stack.callback(lambda: (proc.terminate(), proc.wait(15)))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if b" 200 " in s.recv(100):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the control plane did not start")
            time.sleep(0.1)
        yield url, proc.pid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running CP to measure (default: start one)")
    ap.add_argument("--database-url", help="PostgreSQL for the CP this script starts (default: embedded)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument(
        "--reads-only", action="store_true", help="only the two read scenarios (for alternated A/B runs)"
    )
    args = ap.parse_args()

    def run(url: str, pid: int | None = None) -> list[Result]:
        try:
            import uvloop

            return uvloop.run(bench(url, args.clients, args.duration, pid, args.reads_only))
        except ImportError:
            return asyncio.run(bench(url, args.clients, args.duration, pid, args.reads_only))

    if args.url:
        results = run(args.url)
    else:
        with local_cp(args.database_url) as (url, pid):
            results = run(url, pid)

    print(
        f"\nwarren CP auth benchmark: {args.clients} clients, {args.duration:.0f} s per scenario, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'scenario':<26} {'req/s':>9} {'p50':>10} {'p99':>10} {'CP CPU/req':>10} {'requests':>8}")
    for r in results:
        print(r.row())
    reads = [r for r in results if r.name in ("api-key read", "jwt team read")]
    ok = all(
        len(r.latencies) / r.elapsed >= 800 and statistics.quantiles(r.latencies, n=100)[98] <= 0.025
        for r in reads
    )
    print(f"target >= 800 reads/s at p99 <= 25 ms: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
