"""The control plane's instructions per authenticated GET, counted rather than timed (no agents).

    .venv/bin/python bench/auth_instructions.py [--n 50] [--reps 3]
    PYTHONPATH=/tmp/wt-old/src .venv/bin/python bench/auth_instructions.py   # another tree's CP

The embedded PostgreSQL, migrated, and one uvicorn CP under ``valgrind --tool=callgrind``
(bench/schedule.py's ``control_plane``, on 127.0.0.1 only; instrumentation on once it is up and
warm). Per request kind, --n requests one at a time on one keep-alive connection, --reps times:
callgrind's ``Ir`` (every thread), raw, less the idle CP's rate over as long, and less the
garbage collector's share (bench/cp_create.py's ``counted_gc``). The kinds, one per auth
dependency (cp/api/deps.py):

  API key, TeamContext   GET /v1/sandboxes/<unknown>  (404: the key check, one statement)
  JWT, TeamContext       GET /v1/sandboxes/<unknown>  (404: the JWT check, one statement)
  JWT, CurrentUser       GET /v1/api-keys
  JWT, UserSession       GET /v1/users/me
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

import warren  # noqa: E402
from bench.cp_create import QUIET, callgrind, counted, counted_gc  # noqa: E402
from bench.schedule import Conn, control_plane  # noqa: E402
from warren import ids  # noqa: E402


class AuthConn(Conn):
    """bench/schedule.py's raw connection with any credential header."""

    def __init__(self, host: str, port: int, header: str) -> None:
        super().__init__(host, port, "")
        self.header = header

    async def get(self, path: str) -> int:
        assert self.reader is not None and self.writer is not None
        head = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.header}\r\n\r\n"
        self.writer.write(head.encode())
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        length = next((int(x[15:]) for x in lines if x.lower().startswith(b"content-length:")), 0)
        if length:
            await self.reader.readexactly(length)
        return int(raw[9:12])


async def credentials(url: str) -> tuple[str, str]:
    """A new user's JWT and a team API key."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        body = {"email": email, "password": "bench-password-1", "name": "B"}
        r = await http.post("/v1/auth/signup", json=body)
        r.raise_for_status()
        token = r.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = await http.post("/v1/api-keys", json={"name": "bench"}, headers=auth)
        r.raise_for_status()
        return token, r.json()["key"]


async def measure(url: str, pid: int, out: Path, n: int, reps: int) -> None:
    token, key = await credentials(url)
    u = httpx.URL(url)
    missing = f"/v1/sandboxes/{ids.sandbox_id(uuid.UUID(int=1))}"
    kinds = (
        ("API key, TeamContext", f"X-API-Key: {key}", missing, 404),
        ("JWT, TeamContext", f"Authorization: Bearer {token}", missing, 404),
        ("JWT, CurrentUser", f"Authorization: Bearer {token}", "/v1/api-keys", 200),
        ("JWT, UserSession", f"Authorization: Bearer {token}", "/v1/users/me", 200),
    )
    conns = []
    for _, header, _, _ in kinds:
        conns.append(AuthConn(u.host, u.port or 80, header))
        await conns[-1].open()

    async def run(c: AuthConn, path: str, expect: int, k: int) -> None:
        for _ in range(k):
            status = await c.get(path)
            assert status == expect, (path, status)

    for c, (_, _, path, expect) in zip(conns, kinds, strict=True):
        await run(c, path, expect, 2 * n)  # warm: the pool's connections, prepared statements
    callgrind(pid, "-i", "on")
    idle, idle_dt = await counted(pid, asyncio.sleep(10))
    rate = idle / idle_dt
    print(f"idle CP: {rate / 1e6:.3f} M Ir/s (taken off below)")
    print(f"{'':26}{'n':>4}{'M Ir / request':>16}{'less idle':>11}{'in GC':>8}{'less both':>11}")
    for _ in range(reps):
        for c, (label, _, path, expect) in zip(conns, kinds, strict=True):
            ir, gc, dt = await counted_gc(pid, out, run(c, path, expect, n))
            net = ir - rate * dt
            print(
                f"  {label:<24}{n:>4}{ir / n / 1e6:>16.3f}{net / n / 1e6:>11.3f}{gc / n / 1e6:>8.3f}"
                f"{(net - gc) / n / 1e6:>11.3f}"
            )
    for c in conns:
        c.close()


async def main_async(args: argparse.Namespace) -> None:
    os.environ.update(QUIET)
    with tempfile.TemporaryDirectory(prefix="warren-bench-authir-", ignore_cleanup_errors=True) as d:
        home = Path(d)
        os.chmod(home, 0o755)
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={home}/cg.out"]
        with control_plane(home, prefix=prefix, start_timeout_s=600) as (url, _pg_url, pid):
            await measure(url, pid, home / "cg.out", args.n, args.reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="requests per measurement")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"warren from {Path(warren.__file__).parent}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
