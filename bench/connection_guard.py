"""What the connection guard (cp/connection_guard.py) costs a server: the server process's CPU
per new connection (one request each, ``Connection: close``) and per keep-alive request, for
uvicorn's httptools protocol and the guarded one, on a trivial ASGI app (so the HTTP layer is
all there is to measure). Run under ``nice -n -19`` and quote ``uptime`` beside the figures.

    .venv/bin/python bench/connection_guard.py [--connections 6000] [--requests 40000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import psutil

SERVER = r"""
import sys, uvicorn
from warren.cp.connection_guard import ConnectionLimits, GuardedHttpToolsProtocol
class Guarded(GuardedHttpToolsProtocol):
    limits = ConnectionLimits(15.0, 1 << 20, 1 << 20, "")
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
http = Guarded if sys.argv[2] == "guarded" else "httptools"
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=http, log_level="error", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def measure(kind: str, connections: int, requests: int) -> tuple[float, float]:
    """Server CPU (µs) per new connection + request, and per keep-alive request."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), kind])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        proc = psutil.Process(server.pid)
        c0 = cpu(proc)
        for _ in range(connections):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while s.recv(4096):
                    pass
        c1 = cpu(proc)
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(requests):
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while not got.endswith(b"ok"):
                    got += s.recv(4096)
        c2 = cpu(proc)
    finally:
        server.terminate()
        server.wait()
    return (c1 - c0) / connections * 1e6, (c2 - c1) / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=6000)
    ap.add_argument("--requests", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.rounds):
        for kind in ("plain", "guarded"):
            per_conn, per_req = measure(kind, args.connections, args.requests)
            print(f"{kind:8s} server CPU per connection + request {per_conn:6.1f} µs, ", end="")
            print(f"per keep-alive request {per_req:5.1f} µs")


if __name__ == "__main__":
    main()
