"""What a flood of bad preview credentials costs the preview proxy, in the CP and in ``warren
proxy``, and another tenant's reads meanwhile (docs/security.md §24, ``cp/refusal_hold.py``).

    sudo .venv/bin/python bench/preview_refusals.py [--flood 16] [--duration 6] [--hold 3]

One platform (a CP process, a real agent) with ``WARREN_REFUSAL_HOLD_S`` = ``--hold`` (3, the
production value; 0 turns the hold off), and a ``warren proxy`` beside it. Two sandboxes serve
a small page on port 8000 (private): the attacked one, and another tenant's. For each process
and each kind of bad credential an attacker floods the attacked sandbox's preview from a
loopback address of its own (a fresh budget each) on ``--flood`` keep-alive connections, while
the tenant reads its own preview (its traffic token) from another address on one connection,
and, on the CP, ``GET /v1/sandboxes`` on another. Printed: the attacker's answers a second,
the process's CPU (cores) over the run, the tenant's reads/s, p50 and p99. A row ``(none)`` is
the tenant alone. ``--hold 0`` is the proxy as it was before session 30 (its refusals
unheld). Run on an idle machine; quote ``uptime`` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._platform import require_root, running_platform
from bench.api_auth import Result, build, cpu_seconds
from bench.proxy import SERVER
from bench.refusal_flood import SourcedConn
from tests.harness.machine import free_port
from tests.harness.platform import Platform
from tests.harness.tenant import signup
from warren import ids

TENANT = "127.0.0.2"
PORT = 8000


async def _serving(url: str, key: str) -> tuple[str, str]:
    """A sandbox of ``key``'s team with SERVER on PORT: (id, traffic token)."""
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
        r = await http.post("/v1/sandboxes", json={"memory_mb": 256})
        r.raise_for_status()
        sid, token = r.json()["id"], r.json()["traffic_token"]
        run = {"cmd": "sh", "args": ["-c", "cat > /tmp/s.py"], "stdin": SERVER}
        (await http.post(f"/v1/sandboxes/{sid}/exec", json=run)).raise_for_status()
        start = {"cmd": "sh", "args": ["-c", "(setsid python3 /tmp/s.py >/dev/null 2>&1 &)"]}
        (await http.post(f"/v1/sandboxes/{sid}/exec", json=start)).raise_for_status()
        probe = {
            "cmd": "python3",
            "args": ["-c", f"import socket; socket.create_connection(('127.0.0.1', {PORT}))"],
        }
        while (await http.post(f"/v1/sandboxes/{sid}/exec", json=probe)).json()["exit_code"] != 0:
            await asyncio.sleep(0.1)
    return sid, token


async def _expired_query(url: str, key: str, sid: str) -> str:
    """A real signed URL's query, once it has expired (its signature good, its ``exp`` past)."""
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:
        r = await http.post(f"/v1/sandboxes/{sid}/preview/signed-url", json={"port": PORT, "expires": 1})
        r.raise_for_status()
    await asyncio.sleep(2.5)
    return str(r.json()["url"]).partition("?")[2]


def _kinds(sid: str, expired: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Each kind of bad credential: (path, headers)."""
    base = f"/v1/sandboxes/{sid}/ports/{PORT}/"
    forged = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    unknown = ids.sandbox_id(uuid.uuid4())
    return {
        "forged signature": (f"{base}?warren_sig={forged}&exp={int(time.time()) + 3600}", {}),
        "expired signed URL": (f"{base}?{expired}", {}),
        "wrong token": (base, {"X-Warren-Traffic-Token": "wtt_" + secrets.token_urlsafe(32)}),
        "no credential": (base, {}),
        "unknown sandbox": (f"/v1/sandboxes/{unknown}/ports/{PORT}/", {}),
    }


@contextlib.contextmanager
def _warren_proxy(p: Platform) -> Iterator[tuple[str, int]]:
    """``warren proxy`` on the platform's database and CA: (URL, pid)."""
    port = free_port()
    log = open(p.cp.home / "proxy.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "warren.cli.main", "proxy", "--listen", f"127.0.0.1:{port}"],
        env=p.cp.env(), stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


async def loop(
    host: str, port: int, source: str, raw: bytes, res: Result, stop_at: float, seen: dict[int, int]
) -> None:
    c = SourcedConn(host, port, source)
    await c.open()
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            status, _ = await c.request(raw)
            res.latencies.append(time.perf_counter() - t)
            seen[status] = seen.get(status, 0) + 1
    finally:
        c.close()


async def _scenario(
    url: str,
    pid: int,
    flood: tuple[str, bytes] | None,
    reads: list[tuple[str, bytes]],
    args: argparse.Namespace,
) -> tuple[Result, list[Result], float, dict[int, int]]:
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    attacker, tenant = Result("attacker"), [Result(name) for name, _ in reads]
    cpu0 = cpu_seconds(pid) or 0.0
    started = time.perf_counter()
    stop_at = started + args.duration
    seen: dict[int, int] = {}
    floods = [loop(host, port, *flood, attacker, stop_at, seen) for _ in range(args.flood)] if flood else []
    tenant_seen: dict[int, int] = {}
    await asyncio.gather(
        *floods,
        *(
            loop(host, port, TENANT, raw, res, stop_at, tenant_seen)
            for (_, raw), res in zip(reads, tenant, strict=True)
        ),
    )
    assert set(tenant_seen) == {200}, tenant_seen
    elapsed = time.perf_counter() - started
    for r in (attacker, *tenant):
        r.elapsed = elapsed
    return attacker, tenant, ((cpu_seconds(pid) or 0.0) - cpu0) / elapsed, seen


def _row(
    where: str, kind: str, attacker: Result, tenant: list[Result], cores: float, seen: dict[int, int]
) -> str:
    statuses = ",".join(str(s) for s in sorted(seen)) or "-"
    answers = len(attacker.latencies) / attacker.elapsed
    out = f"{where:<6} {kind:<19} {statuses:>7} {answers:>9.0f} {cores:>6.2f}"
    for res in tenant:
        lat = sorted(res.latencies) or [0.0]
        p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        out += f"   {res.name} {len(res.latencies) / res.elapsed:>5.0f}/s {p50:>6.2f} {p99:>7.2f} ms"
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", type=int, default=16, help="the attacker's connections")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--hold", default="3", help="WARREN_REFUSAL_HOLD_S of the CP and warren proxy")
    args = ap.parse_args()
    require_root("bench/preview_refusals.py")
    os.environ["WARREN_REFUSAL_HOLD_S"] = args.hold
    # The tenant's reads are not to be refused: its team's rate limit is policy, not capacity.
    os.environ["WARREN_TEAM_RATE_LIMIT_PER_S"] = "1000000000"
    rows = []
    async with running_platform("warren-bench-preview-refusals-", ("127.0.0.34",)) as (p, _base):
        sid, _ = await _serving(p.url, p.api_key)
        other = await asyncio.to_thread(signup, p.url, "bench-other")
        other_sid, other_token = await _serving(p.url, other.api_key)
        kinds = _kinds(sid, await _expired_query(p.url, p.api_key, sid))
        with _warren_proxy(p) as (proxy_url, proxy_pid):
            source = 40
            for where, url, pid in (("cp", p.url, p.cp.pid), ("proxy", proxy_url, proxy_pid)):
                hp = url.removeprefix("http://")
                preview = build(
                    "GET",
                    f"/v1/sandboxes/{other_sid}/ports/{PORT}/",
                    hp,
                    {"X-Warren-Traffic-Token": other_token},
                )
                reads = [("preview", preview)]
                if where == "cp":
                    reads.append(("api", build("GET", "/v1/sandboxes", hp, {"X-API-Key": other.api_key})))
                for kind, (path, headers) in {"(none)": ("", {}), **kinds}.items():
                    source += 1
                    flood = (f"127.0.0.{source}", build("GET", path, hp, headers)) if path else None
                    rows.append(_row(where, kind, *await _scenario(url, pid, flood, reads, args)))
    print(f"\npreview refusals: hold {args.hold} s, {args.flood} attacker connections, {args.duration:.0f} s")
    head = f"{'where':<6} {'bad credential':<19} {'status':>7} {'answers/s':>9} {'cores':>6}"
    print(head + "   tenant reads/s p50 p99")
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
