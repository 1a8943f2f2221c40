"""Directory watch end to end: ``sbx.files.watch_dir`` (the CP's watch WebSocket) and polling
watchers (``sbx.files.create_watcher``), sync and async, on a real sandbox; refusals; another
team's watcher."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from warren import AsyncSandbox, Sandbox
from warren.sdk import FilesystemEvent, NotFoundError, PayloadTooLargeError

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), pytest.mark.shared_platform]

# A file created and written, a new subdirectory and a file in it (made faster than its watch
# can be added: the scan reports it), a rename, a removal.
TREE = """
set -e
echo one > /w/a.txt
echo two >> /w/a.txt
mkdir -p /w/sub/new
echo three > /w/sub/new/f.txt
mv /w/a.txt /w/b.txt
rm /w/b.txt
"""
ORDER = [
    ("create", "/w/a.txt"),
    ("write", "/w/a.txt"),
    ("create", "/w/sub"),
    ("create", "/w/sub/new"),
    ("create", "/w/sub/new/f.txt"),
    ("rename", "/w/b.txt"),
    ("remove", "/w/b.txt"),
]


@pytest.fixture(scope="module")
def sbx(platform: Platform) -> Iterator[Sandbox]:
    # Room for 10k directories: the sandbox's disk (and its inodes) is sized by its memory.
    with Sandbox.create(memory_mb=512, **platform.sdk()) as s:
        yield s


def _fresh(sbx: Sandbox, path: str) -> None:
    assert sbx.commands.run(f"rm -rf {path} && mkdir -p {path}").exit_code == 0


def _check_tree(events: list[FilesystemEvent]) -> None:
    seen = [(e.type, e.path) for e in events]
    idx = [seen.index(x) for x in ORDER]
    assert idx == sorted(idx), seen
    rename = events[seen.index(("rename", "/w/b.txt"))]
    assert rename.old_path == "/w/a.txt"
    # The entry is read when the event is sent: b.txt may be gone by then.
    assert rename.entry is None or rename.entry.size == 8
    assert events[seen.index(("remove", "/w/b.txt"))].entry is None


class Collected:
    def __init__(self) -> None:
        self.events: list[FilesystemEvent] = []
        self.cond = threading.Condition()

    def __call__(self, e: FilesystemEvent) -> None:
        with self.cond:
            self.events.append(e)
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[FilesystemEvent]], bool], timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.events), timeout), self.events


def _removed(evs: list[FilesystemEvent]) -> bool:
    return any(e.type == "remove" for e in evs)


def test_watch_dir_streams_a_tree_in_order(sbx: Sandbox) -> None:
    _fresh(sbx, "/w")
    got = Collected()
    h = sbx.files.watch_dir("/w", got)
    try:
        sbx.commands.run(TREE)
        got.wait_for(_removed)
    finally:
        h.stop()
    _check_tree(got.events)
    assert h.error is None


def test_polling_watcher_reports_a_tree_in_order(sbx: Sandbox) -> None:
    _fresh(sbx, "/w")
    w = sbx.files.create_watcher("/w")
    sbx.commands.run(TREE)
    events: list[FilesystemEvent] = []
    deadline = time.monotonic() + 30
    while not _removed(events):
        assert time.monotonic() < deadline, events
        events += w.get_new_events()
        assert not w.overflowed
    _check_tree(events)
    w.remove()
    with pytest.raises(NotFoundError):
        w.get_new_events()


def test_burst_of_writes_keeps_the_last(sbx: Sandbox) -> None:
    _fresh(sbx, "/c")
    got = Collected()
    h = sbx.files.watch_dir("/c", got)
    try:
        script = "for i in range(1, 21):\n    open('/c/f', 'w').write('x' * i)\nopen('/c/done', 'w').close()"
        sbx.commands.run(f'python3 -c "{script}"')
        got.wait_for(lambda evs: any(e.path == "/c/done" for e in evs))
    finally:
        h.stop()
    writes = [e for e in got.events if e.path == "/c/f" and e.type == "write"]
    assert writes and writes[-1].entry is not None and writes[-1].entry.size == 20


def test_refusals(platform: Platform, sbx: Sandbox) -> None:
    with pytest.raises(NotFoundError):
        sbx.files.watch_dir("/nope", lambda e: None)
    with pytest.raises(NotFoundError):
        sbx.files.create_watcher("/nope")
    # Hostile: 10k directories. Capped, with the cap in the message.
    sbx.commands.run("python3 -c \"import os\nfor i in range(10000): os.makedirs(f'/many/{i}')\"")
    with pytest.raises(PayloadTooLargeError, match="8192"):
        sbx.files.create_watcher("/many")
    with pytest.raises(PayloadTooLargeError, match="8192"):
        sbx.files.watch_dir("/many", lambda e: None)


def test_another_teams_watcher_is_404(platform: Platform, sbx: Sandbox) -> None:
    w = sbx.files.create_watcher("/tmp")
    email = f"w{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        r = http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Other"})
        assert r.status_code == 201, r.text
        other = {"Authorization": f"Bearer {r.json()['token']}"}
        base = f"/v1/sandboxes/{sbx.id}/watchers/{w.id}"
        assert http.get(f"{base}/events", headers=other).status_code == 404
        assert http.delete(base, headers=other).status_code == 404
        assert (
            http.post(f"/v1/sandboxes/{sbx.id}/watchers", json={"path": "/tmp"}, headers=other).status_code
            == 404
        )
        # The owner still has it; a made-up id is a 404 too.
        assert http.get(f"{base}/events", headers=platform.headers).status_code == 200
        bad = f"/v1/sandboxes/{sbx.id}/watchers/wch-{'0' * 25}/events"
        assert http.get(bad, headers=platform.headers).status_code == 404
    w.remove()


async def test_async_watch_and_watcher(platform: Platform, sbx: Sandbox) -> None:
    _fresh(sbx, "/w")
    seen: list[FilesystemEvent] = []
    done = asyncio.Event()

    async def on_event(e: FilesystemEvent) -> None:
        seen.append(e)
        if e.type == "remove":
            done.set()

    a = await AsyncSandbox.connect(sbx.id, **platform.sdk())
    try:
        h = await a.files.watch_dir("/w", on_event)
        w = await a.files.create_watcher("/w")
        await a.commands.run(TREE)
        await asyncio.wait_for(done.wait(), 30)
        await h.stop()
        _check_tree(seen)
        polled: list[FilesystemEvent] = []
        async with asyncio.timeout(30):
            while not _removed(polled):
                polled += await w.get_new_events()
        _check_tree(polled)
        await w.remove()
    finally:
        await a.close()
