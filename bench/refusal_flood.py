"""What a flood of refused requests costs one control-plane process, and another client's reads
meanwhile, with the refusal hold off and on (docs/security.md §24, ``cp/refusal_hold.py``).

    python bench/refusal_flood.py [--flood 16] [--duration 8]

For each setting a CP process starts on its own database: an attacker at 127.0.0.3 sends
well-formed API keys that do not exist (each a database lookup, each a 401) on ``--flood``
keep-alive connections, while a tenant at 127.0.0.2 reads ``GET /v1/sandboxes`` with a real
key on 2 connections. Printed: the attacker's answers a second, the CP's CPU (cores) over the
run, and the tenant's reads/s, p50 and p99. Run on an idle machine; quote ``uptime`` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_auth import Conn, Result, build, call, cpu_seconds, local_cp

ATTACKER = "127.0.0.3"
TENANT = "127.0.0.2"


class SourcedConn(Conn):
    """A keep-alive connection from a chosen loopback address (the CP counts per address)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        super().__init__(host, port)
        self.source = source

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=(self.source, 0)
        )
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def loop(host: str, port: int, source: str, raw: bytes, res: Result, stop_at: float) -> None:
    c = SourcedConn(host, port, source)
    await c.open()
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await c.request(raw)
            res.latencies.append(time.perf_counter() - t)
    finally:
        c.close()


async def scenario(url: str, pid: int, flood: int, duration: float) -> tuple[Result, Result, float]:
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    hp = f"{host}:{port}"
    email = f"flood-{secrets.token_hex(5)}@bench.test"
    body = {"email": email, "password": "bench password 1", "name": "Bench"}
    signup = await call(host, port, "POST", "/v1/auth/signup", {}, body)
    assert isinstance(signup, dict)
    jwt_h = {"Authorization": f"Bearer {signup['token']}"}
    key = await call(host, port, "POST", "/v1/api-keys", jwt_h, {"name": "bench"})
    assert isinstance(key, dict)
    read = build("GET", "/v1/sandboxes", hp, {"X-API-Key": key["key"]})
    guess = build("GET", "/v1/sandboxes", hp, {"X-API-Key": "wk_" + secrets.token_hex(16)})
    attacker, tenant = Result("attacker 401s"), Result("tenant reads")
    cpu0 = cpu_seconds(pid) or 0.0
    started = time.perf_counter()
    stop_at = started + duration
    await asyncio.gather(
        *(loop(host, port, ATTACKER, guess, attacker, stop_at) for _ in range(flood)),
        *(loop(host, port, TENANT, read, tenant, stop_at) for _ in range(2)),
    )
    elapsed = time.perf_counter() - started
    attacker.elapsed = tenant.elapsed = elapsed
    return attacker, tenant, ((cpu_seconds(pid) or 0.0) - cpu0) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", type=int, default=16, help="the attacker's connections")
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args()
    rows = []
    for hold in ("0", "3"):
        os.environ["WARREN_REFUSAL_HOLD_S"] = hold
        with local_cp(None) as (url, pid):
            rows.append((hold, *asyncio.run(scenario(url, pid, args.flood, args.duration))))
    print(f"\nrefusal flood: {args.flood} attacker connections, {args.duration:.0f} s, {os.cpu_count()} CPUs")
    print(f"{'hold s':>6} {'401s/s':>8} {'CP cores':>9}   tenant: {'reads/s':>8} {'p50':>9} {'p99':>9}")
    for hold, attacker, tenant, cores in rows:
        lat = sorted(tenant.latencies)
        p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        answers = len(attacker.latencies) / attacker.elapsed
        reads = len(lat) / tenant.elapsed
        print(f"{hold:>6} {answers:>8.0f} {cores:>9.2f}   {'':>8}{reads:>8.0f} {p50:>7.2f}ms {p99:>7.2f}ms")


if __name__ == "__main__":
    main()
