"""What an anonymous flood of a public port nobody listens on costs the preview proxy, the host's
agent (shared by every tenant on the host) and another team's exec on the same host.

    sudo .venv/bin/python bench/public_port_flood.py [--flood 16] [--duration 10] [--hold 3]

One platform (a CP process, one real agent) with ``WARREN_REFUSAL_HOLD_S`` = ``--hold`` (3, the
production value; 0 turns the hold off: the proxy as it was before), and a ``warren proxy``
beside it. The attacked team has two sandboxes with port 8000 public and nothing listening on
it: one running (every request is an ``OpenDialTicket`` RPC to the agent and a TCP connect in
the sandbox's netns, answered 502 ``port_not_open``), one paused (409 ``sandbox_paused``).
Another team runs ``true`` (``POST /v1/sandboxes/{id}/exec``) in a loop on one connection, from
an address of its own, in a sandbox on the same host. Each flood comes from a loopback address
of its own (a fresh refusal budget) on ``--flood`` keep-alive connections, through the CP or
through ``warren proxy`` (then the CP only serves the tenant's exec). Printed per row: the
statuses and answers a second, the CPU (cores) of the flooded process, of the CP, of the
agent's process and of the agent with its descendants (the sandboxes' processes, which the
tenant's exec runs in), and the tenant's exec/s, p50 and p99. Run on an idle machine; quote
``uptime`` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._platform import require_root, running_platform
from bench.api_auth import Result, build, cpu_seconds
from bench.preview_refusals import _warren_proxy, loop
from tests.harness.tenant import signup

TENANT = "127.0.0.2"
PORT = 8000


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, of its waited-for children, and of every live descendant."""
    tck = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    first = True
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            kids = [
                int(c)
                for t in Path(f"/proc/{p}/task").iterdir()
                for c in (t / "children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        ticks = int(fields[11]) + int(fields[12])
        if first:  # the agent's reaped children (the runtime's CLIs, its spawner's forks)
            ticks += int(fields[13]) + int(fields[14])
            first = False
        total += ticks / tck
        todo.extend(kids)
    return total


async def _public_sandbox(http: httpx.AsyncClient, *, paused: bool) -> str:
    r = await http.post("/v1/sandboxes", json={"memory_mb": 128})
    r.raise_for_status()
    sid = str(r.json()["id"])
    (await http.patch(f"/v1/sandboxes/{sid}", json={"public_ports": [PORT]})).raise_for_status()
    if paused:
        (await http.post(f"/v1/sandboxes/{sid}/pause")).raise_for_status()
    return sid


async def _scenario(
    url: str, pid: int, cp_pid: int, agent_pid: int, flood: tuple[str, bytes] | None,
    exec_raw: bytes, cp_port: int, args: argparse.Namespace,
) -> str:  # fmt: skip
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    attacker, tenant = Result("attacker"), Result("tenant exec")
    before = (cpu_seconds(pid) or 0.0, cpu_seconds(cp_pid) or 0.0, cpu_seconds(agent_pid) or 0.0)
    tree0 = tree_cpu_seconds(agent_pid)
    started = time.perf_counter()
    stop_at = started + args.duration
    seen: dict[int, int] = {}
    tenant_seen: dict[int, int] = {}
    floods = [loop(host, port, *flood, attacker, stop_at, seen) for _ in range(args.flood)] if flood else []
    await asyncio.gather(*floods, loop(host, cp_port, TENANT, exec_raw, tenant, stop_at, tenant_seen))
    assert set(tenant_seen) == {200}, tenant_seen
    elapsed = time.perf_counter() - started
    after = (cpu_seconds(pid) or 0.0, cpu_seconds(cp_pid) or 0.0, cpu_seconds(agent_pid) or 0.0)
    tree = (tree_cpu_seconds(agent_pid) - tree0) / elapsed
    flooded, cp, agent = ((a - b) / elapsed for a, b in zip(after, before, strict=True))
    statuses = ",".join(str(s) for s in sorted(seen)) or "-"
    lat = sorted(tenant.latencies) or [0.0]
    p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    return (
        f"{statuses:>7} {len(attacker.latencies) / elapsed:>9.0f} {flooded:>7.2f} {cp:>5.2f} {agent:>6.2f}"
        f" {tree:>6.2f}   {len(tenant.latencies) / elapsed:>5.0f}/s {p50:>6.2f} {p99:>7.2f} ms"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", type=int, default=16, help="the attacker's connections")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--hold", default="3", help="WARREN_REFUSAL_HOLD_S of the CP and warren proxy")
    ap.add_argument("--where", default="cp,proxy", help="which processes to flood: cp, proxy or both")
    args = ap.parse_args()
    require_root("bench/public_port_flood.py")
    os.environ["WARREN_REFUSAL_HOLD_S"] = args.hold
    # The tenant's execs are not to be refused: its team's rate limit is policy, not capacity.
    os.environ["WARREN_TEAM_RATE_LIMIT_PER_S"] = "1000000000"
    rows = []
    async with running_platform("warren-bench-public-port-flood-", ("127.0.0.34",)) as (p, _base):
        async with httpx.AsyncClient(base_url=p.url, headers=p.headers, timeout=120) as http:
            running = await _public_sandbox(http, paused=False)
            paused = await _public_sandbox(http, paused=True)
        other = await asyncio.to_thread(signup, p.url, "bench-other")
        async with httpx.AsyncClient(
            base_url=p.url, headers={"X-API-Key": other.api_key}, timeout=120
        ) as http:
            r = await http.post("/v1/sandboxes", json={"memory_mb": 128})
            r.raise_for_status()
            other_sid = r.json()["id"]
        cp_hp = p.url.removeprefix("http://")
        body = json.dumps({"cmd": "true"}).encode()
        exec_raw = build("POST", f"/v1/sandboxes/{other_sid}/exec", cp_hp, {"X-API-Key": other.api_key}, body)
        cp_port = int(p.url.rsplit(":", 1)[1])
        agent = p.agents[0].proc
        assert agent is not None
        agent_pid = agent.pid
        with _warren_proxy(p) as (proxy_url, proxy_pid):
            source = 40
            targets = {"cp": (p.url, p.cp.pid), "proxy": (proxy_url, proxy_pid)}
            for where in args.where.split(","):
                url, pid = targets[where]
                hp = url.removeprefix("http://")
                kinds = {
                    "(none)": None,
                    "no listener (502)": f"/v1/sandboxes/{running}/ports/{PORT}/",
                    "paused (409)": f"/v1/sandboxes/{paused}/ports/{PORT}/",
                }
                for kind, path in kinds.items():
                    if where != "cp" and path is None:
                        continue  # the tenant alone is the CP's row
                    source += 1
                    flood = (f"127.0.0.{source}", build("GET", path, hp, {})) if path else None
                    row = await _scenario(url, pid, p.cp.pid, agent_pid, flood, exec_raw, cp_port, args)
                    rows.append(f"{where:<6} {kind:<18} {row}")
    print(
        f"\npublic port floods: hold {args.hold} s, {args.flood} attacker connections, {args.duration:.0f} s"
    )
    head = f"{'where':<6} {'flood':<18} {'status':>7} {'answers/s':>9} {'flooded':>7} {'cp':>5} {'agent':>6}"
    print(head + f" {'a+kids':>6}   tenant exec/s p50 p99")
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
