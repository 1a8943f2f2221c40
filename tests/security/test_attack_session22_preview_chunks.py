"""Session 22: a chunked response of 1-byte chunks through the preview proxy, against every
other tenant's API on the same CP.

The proxy parses a sandbox's response with h11 on the CP's event loop. A chunked body's every
chunk is an event (~5 us of CPU each, with the proxy's send to the client a good deal more), and
the proxy went on parsing what one read brought (up to 1 MiB: ~170 000 chunks of 1 byte) without
letting the loop go while its client's transport took each byte. One such response, read as
fast as the attacker's client could (a few hundred KB/s: nothing for her), made another team's
``GET /v1/sandboxes`` take 755 ms at the median instead of ~5 ms, 2.6 s with four (the CP at a
core); a large body relayed 3.4 GB in the same 10 s with the other team's median at 5 ms.

As the attacker runs it: her own sandbox's public port answers ``/chunks`` with an endless body
of ``1\\r\\nx\\r\\n``; ``CONNS`` clients read it as fast as they can for ``WINDOW_S`` seconds.

Fixed (cp/proxy/http.py): a connection's parsed events are paced (``EVENTS_BURST`` at once, then
``EVENTS_PER_S``; the loop is let go every ``EVENTS_PER_TURN``), and small chunks already read
go to the client in one send. Expected: each client gets at most the pace's bytes (one byte a
chunk) in the window; what it costs the CP and the other team's median are printed.
Measured with 2 clients, before: 339 and 422 KB in 10 s, the CP 8.6 s of CPU, the other team's
median 1133 ms; after: 45 KB each, 0.9 s, 3 ms.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from warren.cp.proxy import http as proxy_http

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PORT = 8000
CONNS = 2
WINDOW_S = 10.0
# One byte a chunk: the burst, the window at the pace, a turn's slack, and a margin.
BOUND = int(1.5 * (proxy_http.EVENTS_BURST + WINDOW_S * proxy_http.EVENTS_PER_S + proxy_http.EVENTS_PER_TURN))

SERVER = r"""
import socket, threading
def serve(c):
    try:
        f = c.makefile("rb")
        while f.readline() not in (b"\r\n", b""):
            pass
        c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"1\r\nx\r\n" * 8192
        while True:
            c.sendall(chunk)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8000)); s.listen(512)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
START = (
    "cat > /tmp/s.py <<'EOF'\n" + SERVER + "EOF\n(setsid python3 /tmp/s.py >/dev/null 2>&1 &); "
    "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' "
    "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
)


@pytest.fixture(scope="module")
def url(platform: Platform, alice: Tenant) -> Iterator[str]:
    """The URL of Alice's public port's endless response."""
    sid = alice.create(memory_mb=256)
    try:
        r = alice.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
        assert r.status_code == 200, r.text
        alice.sh(sid, START)
        yield f"{platform.url}/v1/sandboxes/{sid}/ports/{PORT}/chunks"
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _read(url: str, got: list[int], i: int, stop: threading.Event) -> None:
    with httpx.Client(timeout=60) as c, c.stream("GET", url) as r:
        for data in r.iter_bytes():
            got[i] += len(data)
            if stop.is_set():
                return


def test_a_response_of_one_byte_chunks_is_paced(platform: Platform, url: str, bob: Tenant) -> None:
    cp = psutil.Process(platform.cp.pid)
    cpu = sum(cp.cpu_times()[:2])
    got, stop = [0] * CONNS, threading.Event()
    readers = [threading.Thread(target=_read, args=(url, got, i, stop), daemon=True) for i in range(CONNS)]
    for t in readers:
        t.start()
    waits: list[float] = []
    end = time.monotonic() + WINDOW_S
    with bob.client() as c:
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert c.get("/v1/sandboxes").status_code == 200
            waits.append(time.monotonic() - t0)
            time.sleep(0.1)
    taken = list(got)
    stop.set()
    for t in readers:
        t.join(30)
    median_ms = statistics.median(waits) * 1000
    print(
        f"{CONNS} readers of 1-byte chunks: {taken} bytes in {WINDOW_S:.0f} s, CP CPU "
        f"{sum(cp.cpu_times()[:2]) - cpu:.1f} s, another team's GET median {median_ms:.0f} ms"
    )
    assert all(0 < n <= BOUND for n in taken), (taken, BOUND)
