"""Preview proxy (issue 14): small GETs and a large streamed download through the CP's proxy
(path routing, traffic token), next to the same server reached directly inside the sandbox's
netns, in one run.

    sudo .venv/bin/python bench/proxy.py [--requests 2000] [--mib 512] [--rounds 2] [--data-port auto]

``--data-port`` picks the proxy's way to the agent (docs/networking.md §3): ``auto`` as deployed
(the agent's data port; plain TCP here, where the agent is on the CP's loopback), ``tls`` (the
data port with mutual TLS, as between two machines), ``off`` (no data port: DialPort over gRPC).

The server is a stdlib ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive) bound to 127.0.0.1 in a
real sandbox. The client is the same raw-socket HTTP/1.1 client for both paths, one keep-alive
connection, requests one after another (latency); its socket for the direct path is made in
the sandbox's netns (``setns`` in a thread of its own, as the agent does). Rounds alternate
direct and proxied; the CPU the CP and the agent spend per small GET is read from /proc.
Targets: ≤ 1 ms added at p50, ≥ 150 MB/s streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402

SERVER = r"""
import http.server
BIG = 1 << 20
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/big/"):
            n = int(self.path[5:]) << 20
            self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
            block = b"z" * BIG
            for _ in range(n >> 20): self.wfile.write(block)
        else:
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""


def netns_socket(netns_path: str) -> socket.socket:
    """A TCP socket of the sandbox's netns (made in a thread that entered it)."""
    out: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out.append(socket.socket())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class Client:
    """HTTP/1.1 over one keep-alive socket; responses with Content-Length only."""

    def __init__(
        self, sock: socket.socket, addr: tuple[str, int], prefix: str, headers: dict[str, str]
    ) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(addr)
        self.sock, self.prefix = sock, prefix
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.buf = bytearray(1 << 20)

    def get(self, path: str) -> int:
        req = f"GET {self.prefix}{path} HTTP/1.1\r\nHost: bench\r\n{self.extra}\r\n".encode()
        self.sock.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        got = len(rest)
        view = memoryview(self.buf)
        while got < length:
            n = self.sock.recv_into(view, min(len(view), length - got))
            if not n:
                raise ConnectionError("closed mid-body")
            got += n
        return length

    def close(self) -> None:
        self.sock.close()


def latencies(c: Client, n: int) -> tuple[list[float], float]:
    for _ in range(50):  # warm up
        c.get("/small")
    out = []
    t_all = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        c.get("/small")
        out.append((time.perf_counter() - t) * 1000)
    return out, n / (time.perf_counter() - t_all)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream(c: Client, mib: int) -> float:
    t = time.perf_counter()
    got = c.get(f"/big/{mib}")
    return got / (time.perf_counter() - t) / 1e6


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100)[int(p) - 1] if p < 100 else max(xs)


def netns_of(sandbox_id: str) -> str:
    for claim in Path("/run/warren/netslots").iterdir():
        if claim.name.isdigit() and sandbox_id in claim.read_text():
            return f"/run/netns/warren-s{claim.name}"
    raise RuntimeError(f"no network slot names {sandbox_id}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-port", choices=("auto", "tls", "off"), default="auto")
    args = ap.parse_args()
    require_root("bench/proxy.py")
    import httpx

    # The agent inherits the environment (a registered agent's settings).
    if args.data_port == "tls":
        os.environ["WARREN_AGENT_DIAL_DATA_TLS_ON_LOOPBACK"] = "true"
    elif args.data_port == "off":
        os.environ["WARREN_AGENT_DIAL_DATA_PORT"] = "-1"
    async with running_platform("warren-bench-proxy-", ("127.0.0.33",)) as (p, _base):
        async with httpx.AsyncClient(base_url=p.url, headers=p.headers, timeout=120) as http:
            r = await http.post("/v1/sandboxes", json={"memory_mb": 512})
            r.raise_for_status()
            sid, token = r.json()["id"], r.json()["traffic_token"]
            run = {"cmd": "sh", "args": ["-c", "cat > /tmp/s.py"], "stdin": SERVER}
            (await http.post(f"/v1/sandboxes/{sid}/exec", json=run)).raise_for_status()
            start = {"cmd": "sh", "args": ["-c", "(setsid python3 /tmp/s.py >/dev/null 2>&1 &)"]}
            (await http.post(f"/v1/sandboxes/{sid}/exec", json=start)).raise_for_status()
            probe = {
                "cmd": "python3",
                "args": ["-c", "import socket; socket.create_connection(('127.0.0.1', 8000))"],
            }
            while (await http.post(f"/v1/sandboxes/{sid}/exec", json=probe)).json()["exit_code"] != 0:
                await asyncio.sleep(0.1)
        netns = netns_of(sid)
        cp_host, cp_port = p.url.removeprefix("http://").split(":")
        prefix = f"/v1/sandboxes/{sid}/ports/8000"

        def direct() -> Client:
            return Client(netns_socket(netns), ("127.0.0.1", 8000), "", {})

        def proxied() -> Client:
            return Client(socket.socket(), (cp_host, int(cp_port)), prefix, {"X-Warren-Traffic-Token": token})

        # CPU per request of the CP and the agent: what the proxy costs, much less sensitive
        # than wall-clock latency to whatever else runs on the machine.
        pids = {"cp": p.cp.pid, "agent": p.agents[0].proc.pid}  # type: ignore[union-attr]
        results: dict[str, dict[str, list[float]]] = {"direct": {}, "proxy": {}}
        for _ in range(args.rounds):
            for name, make in (("direct", direct), ("proxy", proxied)):
                c = await asyncio.to_thread(make)
                cpu0 = {k: cpu_s(v) for k, v in pids.items()}
                lat, rps = await asyncio.to_thread(latencies, c, args.requests)
                for k, v in pids.items():
                    cpu = (cpu_s(v) - cpu0[k]) / (args.requests + 50) * 1000
                    results[name].setdefault(f"cpu_{k}", []).append(cpu)
                mbs = await asyncio.to_thread(stream, c, args.mib)
                c.close()
                res = results[name]
                res.setdefault("lat", []).extend(lat)
                res.setdefault("rps", []).append(rps)
                res.setdefault("mbs", []).append(mbs)
        print(f"small GETs: {args.requests} x {args.rounds} rounds, one keep-alive connection; "
              f"download {args.mib} MiB per round; data port: {args.data_port}")  # fmt: skip
        print(f"{'':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'MB/s':>8} "
              f"{'CP cpu ms':>10} {'agent cpu ms':>12}")  # fmt: skip
        for name, res in results.items():
            print(f"{name:8} {statistics.median(res['rps']):8.0f} {pct(res['lat'], 50):8.3f} "
                  f"{pct(res['lat'], 99):8.3f} {statistics.median(res['mbs']):8.0f} "
                  f"{statistics.median(res['cpu_cp']):10.3f} "
                  f"{statistics.median(res['cpu_agent']):12.3f}")  # fmt: skip
        added = pct(results["proxy"]["lat"], 50) - pct(results["direct"]["lat"], 50)
        streamed = statistics.median(results["proxy"]["mbs"])
        print(f"added at p50: {added:.3f} ms (target <= 1 ms); "
              f"streamed through the proxy: {streamed:.0f} MB/s (target >= 150)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
