"""Every buffer a tenant can grow is bounded (D2, D9, D10, D13, D17, D18), run the way a hostile
tenant runs it: through the public API, with output and files made inside its own sandbox.

The done-when numbers of issue 11: under a tenant printing 2 GB from one exec, listing a
400 000-entry directory and running five concurrent 60 MB execs, the agent's and the CP's
resident memory each stay under 300 MB. Bad input (D16) is in test_bad_input.py.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MiB = 1 << 20
OUTPUT_CAP = 16 * MiB  # WARREN_AGENT_MAX_EXEC_OUTPUT's default
UPLOAD_CAP = 100 * MiB  # WARREN_MAX_UPLOAD_BYTES's default
RSS_LIMIT = 300 * 1000 * 1000


class PeakRss:
    """Samples the resident memory of some processes every 20 ms; ``peak`` per pid."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, p in self.procs.items():
                self.peak[name] = max(self.peak[name], p.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def sb(alice: Tenant) -> Iterator[str]:
    sid = alice.create()
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


def exec_(
    t: Tenant, sid: str, script: str, timeout_sec: int = 60, http_timeout: float = 120
) -> httpx.Response:
    body = {"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": timeout_sec}
    return t.w("POST", f"/v1/sandboxes/{sid}/exec", body, timeout=http_timeout)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


# --- D2, D9, D10: the done-when numbers ------------------------------------------------------


def test_flood_listing_and_concurrent_execs_keep_agent_and_cp_under_300_mb(
    platform: Any, alice: Tenant, sb: str
) -> None:
    # 400 000 entries: hard links (a dentry and an inode reservation each), in a sandbox whose
    # disk has that many inodes (128 per MiB).
    big = alice.create(memory_mb=4096, disk_size_mb=3300)
    make = (
        "import os; os.mkdir('/root/many'); open('/root/many/f', 'w').close(); "
        "[os.link('/root/many/f', '/root/many/%06d' % i) for i in range(400000)]"
    )
    body = {"cmd": "python3", "args": ["-c", make], "timeout_sec": 300}
    r = alice.w("POST", f"/v1/sandboxes/{big}/exec", body, timeout=400)
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    pids = {"cp": platform.cp.pid, "agent": platform.agents[0].proc.pid}
    with PeakRss(pids) as rss:
        # One exec printing 2 GB: stopped at the cap, the command killed, a clear 413.
        cmd = "head -c 2000000000 /dev/zero; touch /tmp/ran-to-the-end"
        err = assert_error(exec_(alice, sb, cmd), 413, "output_too_large")
        assert str(OUTPUT_CAP) in err["message"] and "stream" in err["message"]
        # Killed at the cap, not run to the end (was an elapsed-time bound, which a loaded
        # machine could break).
        deadline = time.monotonic() + 60
        while "head" in alice.sh(sb, "cat /proc/[0-9]*/comm"):
            assert time.monotonic() < deadline, "the command is still running"
            time.sleep(0.1)
        assert "ran-to-the-end" not in alice.sh(sb, "ls /tmp")

        # The 400 000-entry directory: one bounded page, and it says there is more.
        r = alice.w("POST", f"/v1/sandboxes/{big}/files/list", {"path": "/root/many"})
        assert r.status_code == 200, r.text
        assert len(r.json()) == 1000 and r.headers["x-has-more"] == "true"
        page2 = {"path": "/root/many", "limit": 10000, "cursor": r.headers["x-next-cursor"]}
        r = alice.w("POST", f"/v1/sandboxes/{big}/files/list", page2)
        assert r.status_code == 200 and r.json()[0]["name"] == "001000"
        assert 1000 < len(r.json()) < 10000 and r.headers["x-has-more"] == "true"  # ~1 MiB a page

        # Five concurrent execs of 60 MB each.
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            rs = list(pool.map(lambda _: exec_(alice, sb, "head -c 60000000 /dev/zero"), range(5)))
        for r in rs:
            assert_error(r, 413, "output_too_large")
    assert rss.peak["agent"] < RSS_LIMIT, rss.peak
    assert rss.peak["cp"] < RSS_LIMIT, rss.peak
    alice.w("DELETE", f"/v1/sandboxes/{big}")


def test_five_concurrent_outputs_just_under_the_cap_fit_the_cp_budget(
    platform: Any, alice: Tenant, sb: str
) -> None:
    """Legitimate large results (15 MiB each, half of them control characters, which JSON
    escapes 6x) all succeed, and the CP's memory still stays bounded."""
    script = "head -c 7864320 /dev/zero; head -c 7864320 /dev/zero | tr '\\0' a"
    with PeakRss({"cp": platform.cp.pid}) as rss, concurrent.futures.ThreadPoolExecutor(5) as pool:
        rs = list(pool.map(lambda _: exec_(alice, sb, script), range(5)))
    for r in rs:
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["stdout"]) == 15 * MiB
    assert rss.peak["cp"] < RSS_LIMIT, rss.peak


@pytest.mark.parametrize(
    "script",
    [
        "head -c 20000000 /dev/zero >&2",  # stderr alone
        "head -c 9000000 /dev/zero; head -c 9000000 /dev/zero >&2",  # together past the cap
        "yes",  # never ends by itself: only the cap stops it
    ],
)
def test_output_cap_variants(alice: Tenant, sb: str, script: str) -> None:
    assert_error(exec_(alice, sb, script), 413, "output_too_large")


def test_output_past_the_cap_kills_the_command(alice: Tenant, sb: str) -> None:
    # Were the command only disconnected, `yes` would die of SIGPIPE and the shell go on.
    assert_error(exec_(alice, sb, "yes; touch /tmp/survived"), 413, "output_too_large")
    deadline = time.monotonic() + 60
    while "yes" in alice.sh(sb, "cat /proc/[0-9]*/comm"):
        assert time.monotonic() < deadline, "the command is still running"
        time.sleep(0.1)
    assert "survived" not in alice.sh(sb, "ls /tmp")


def test_output_up_to_the_cap_is_whole(alice: Tenant, sb: str) -> None:
    r = exec_(alice, sb, f"head -c {OUTPUT_CAP - 10} /dev/zero | tr '\\0' z; printf 0123456789 >&2")
    assert r.status_code == 200, r.text[:300]
    assert r.json()["stdout"] == "z" * (OUTPUT_CAP - 10) and r.json()["stderr"] == "0123456789"


# --- D9: listings come in pages --------------------------------------------------------------


def test_listing_pages_cover_a_directory_once(platform: Any, alice: Tenant, sb: str) -> None:
    alice.sh(
        sb, "mkdir -p /root/p/sub && cd /root/p && for i in $(seq 1 2500); do : > f$i; done && : > sub/x"
    )
    seen: list[str] = []
    body: dict[str, Any] = {"path": "/root/p", "depth": 2, "limit": 1000}
    pages = 0
    while True:
        r = alice.w("POST", f"/v1/sandboxes/{sb}/files/list", body)
        assert r.status_code == 200, r.text
        seen += [e["path"] for e in r.json()]
        pages += 1
        if r.headers["x-has-more"] != "true":
            assert "x-next-cursor" not in r.headers
            break
        body["cursor"] = r.headers["x-next-cursor"]
    assert pages == 3 and seen == sorted(seen) and len(seen) == len(set(seen)) == 2502

    # The SDK's list() follows the pages; list_page() gives one.
    from warren import Sandbox

    sbx = Sandbox.connect(sb, url=platform.url, api_key=alice.api_key)
    try:  # (not `with`: leaving that kills the sandbox)
        assert [e.path for e in sbx.files.list("/root/p", depth=2)] == seen
        page = sbx.files.list_page("/root/p", limit=10)
        assert len(page.entries) == 10 and page.has_more and page.next_cursor
    finally:
        sbx.close()

    for bad in ({"limit": 10001}, {"limit": 0}, {"cursor": "%%%"}, {"limit": 2**63}):
        r = alice.w("POST", f"/v1/sandboxes/{sb}/files/list", {"path": "/root/p", **bad})
        assert_error(r, 400, "invalid_request")


# --- D13: unary reads are never cut short by a stale size ------------------------------------


def test_unary_read_of_symlinks_proc_and_growing_files(alice: Tenant, sb: str) -> None:
    alice.sh(sb, "printf 'the real content, longer than the link' > /root/target && "
                 "ln -sf target /root/shadowrel && ln -sf /root/target /root/shadowabs")  # fmt: skip
    for link in ("/root/shadowrel", "/root/shadowabs"):
        r = alice.w("POST", f"/v1/sandboxes/{sb}/files/read", {"path": link})
        assert r.status_code == 200 and r.content == b"the real content, longer than the link"
    r = alice.w("POST", f"/v1/sandboxes/{sb}/files/read", {"path": "/proc/self/status"})
    assert r.status_code == 200 and b"Name:" in r.content
    # A file growing while it is read: whatever length is read arrives whole.
    start = {"cmd": "/bin/sh", "args": ["-c", "while :; do echo 0123456789abcdef >> /root/grow; done"],
             "tag": "grower"}  # fmt: skip
    assert alice.w("POST", f"/v1/sandboxes/{sb}/processes", start).status_code == 201
    try:
        for _ in range(5):
            r = alice.w("POST", f"/v1/sandboxes/{sb}/files/read", {"path": "/root/grow"})
            assert r.status_code == 200
            assert r.content.count(b"\n") >= 1
    finally:
        alice.w("POST", f"/v1/sandboxes/{sb}/processes/grower/signal", {"signal": "SIGKILL"})
        alice.sh(sb, "rm -f /root/grow")


def test_unary_read_cap_applies_to_the_symlink_target(alice: Tenant, sb: str) -> None:
    alice.sh(sb, f"truncate -s {UPLOAD_CAP + 1} /root/sparse && ln -sf sparse /root/tiny-link")
    r = alice.w("POST", f"/v1/sandboxes/{sb}/files/read", {"path": "/root/tiny-link"})
    assert_error(r, 413, "too_large")
    alice.sh(sb, "rm -f /root/sparse /root/tiny-link")


# --- D17: abandoned execs and their time limits ----------------------------------------------


def test_abandoned_unary_exec_is_killed(alice: Tenant, sb: str) -> None:
    body = {"cmd": "/bin/sleep", "args": ["3333"], "timeout_sec": 3600}
    with pytest.raises(httpx.TimeoutException):
        alice.w("POST", f"/v1/sandboxes/{sb}/exec", body, timeout=2)
    deadline = time.monotonic() + 60
    while "sleep 3333" in alice.sh(sb, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"):
        assert time.monotonic() < deadline, "the abandoned command is still running"
        time.sleep(0.2)


@pytest.mark.parametrize("timeout_sec", [3601, 3000000000, 2**63, 2**64])
def test_exec_timeout_is_capped(alice: Tenant, sb: str, timeout_sec: int) -> None:
    for route, body in (
        ("exec", {"cmd": "/bin/true", "timeout_sec": timeout_sec}),
        ("processes", {"cmd": "/bin/sleep", "args": ["1"], "timeout_sec": timeout_sec}),
    ):
        r = alice.w("POST", f"/v1/sandboxes/{sb}/{route}", body)
        err = assert_error(r, 400, "invalid_request")
        assert "timeout_sec" in err["message"]
        if timeout_sec == 3601:
            assert "3600" in err["message"]


# --- D18: status codes and the upload cap's envelope -----------------------------------------


@pytest.mark.parametrize("path", ["/.warren/guest/x", "/sys/x"])
def test_write_to_a_read_only_path_is_403(alice: Tenant, sb: str, path: str) -> None:
    with alice.client() as c:
        r = c.post(f"/v1/sandboxes/{sb}/files/write", data={"path": path}, files={"file": ("x", b"x")})
    assert_error(r, 403, "permission_denied")


def test_upload_cap_is_the_files_not_the_forms(alice: Tenant, sb: str) -> None:
    exact = b"\x5a" * UPLOAD_CAP
    with alice.client() as c:
        r = c.post(
            f"/v1/sandboxes/{sb}/files/write", data={"path": "/root/exact"}, files={"file": ("f", exact)}
        )
        assert r.status_code == 204, r.text
        assert alice.sh(sb, "stat -c %s /root/exact && rm /root/exact").strip() == str(UPLOAD_CAP)
        r = c.post(f"/v1/sandboxes/{sb}/files/write", data={"path": "/root/over"},
                   files={"file": ("f", exact + b"!")})  # fmt: skip
        assert_error(r, 413, "too_large")
    assert_gone(alice, sb, "over")


def assert_gone(t: Tenant, sid: str, name: str) -> None:
    """No file ``name`` in /root, and its temporary (``.name.warren-…``, removed as the agent's
    cancelled write unwinds, just after the answer) goes within seconds: nothing partial stays."""
    deadline = time.monotonic() + 60
    while True:
        names = t.sh(sid, "ls -a /root").split()
        assert name not in names
        if not any(name in n for n in names):
            return
        assert time.monotonic() < deadline, names
        time.sleep(0.1)


def test_unary_upload_with_the_file_before_the_path(alice: Tenant, sb: str) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        f"payload-first\r\n--{boundary}\r\n"
        f'Content-Disposition: form-data; name="path"\r\n\r\n/root/late-path\r\n--{boundary}--\r\n'
    ).encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with alice.client() as c:
        r = c.post(f"/v1/sandboxes/{sb}/files/write", content=body, headers=headers)
        assert r.status_code == 204, r.text
        # A broken upload (the body ends inside the file part) leaves nothing.
        cut = body[: body.index(b"payload-first") + 5]  # the body ends inside the file
        streamed = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n/root/broken\r\n'
        ).encode() + cut
        r = c.post(f"/v1/sandboxes/{sb}/files/write", content=streamed, headers=headers)
        assert_error(r, 400, "invalid_request")
    assert alice.sh(sb, "cat /root/late-path") == "payload-first"
    assert_gone(alice, sb, "broken")
