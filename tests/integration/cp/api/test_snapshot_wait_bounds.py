"""The bounds of the commands that wait out a sandbox's snapshot pause (services/snapshot_hold.py):
a waiter holds one of its owner's stream slots (``WARREN_MAX_STREAMS_PER_OWNER``, 2 on this
module's CP), so past that bound a command is answered at once, as without waiting; and a waiter
whose credentials are revoked meanwhile is answered 401, as a stream is ended.

The mark is written with SQL, as another replica's snapshot writes it (the sandbox still runs on
its host); clearing it is the snapshot's end.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform, api_sandbox
from warren import ids

pytestmark = [pytest.mark.root]

PER_OWNER = 2
TRUE = {"cmd": "/bin/true", "timeout_sec": 30}
MARK = "UPDATE sandboxes SET status = 'paused', paused_state = 'snapshot', last_updated = now() WHERE id = :s"
CLEAR = "UPDATE sandboxes SET status = 'running', paused_state = NULL WHERE id = :s"


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    from tests.harness.platform import running_platform

    async with running_platform(db_url, platform_dir, {"WARREN_MAX_STREAMS_PER_OWNER": str(PER_OWNER)}) as p:
        yield p


@pytest.fixture
def sandbox(platform: Platform) -> Iterator[str]:
    with api_sandbox(platform) as sid:
        yield sid


def _sql(platform: Platform, statement: str, sid: str) -> None:
    asyncio.run(platform.sql(statement, s=ids.parse_id(ids.Kind.SANDBOX, sid)))


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_waiters_past_the_owners_stream_bound_are_answered_at_once(platform: Platform, sandbox: str) -> None:
    answers: list[int] = []

    def one() -> None:
        r = httpx.post(
            f"{platform.url}/v1/sandboxes/{sandbox}/exec", json=TRUE, headers=platform.headers, timeout=60
        )
        answers.append(r.status_code)

    _sql(platform, MARK, sandbox)
    threads = [threading.Thread(target=one) for _ in range(PER_OWNER + 3)]
    try:
        for t in threads:
            t.start()
        # Those past the bound are refused as a paused sandbox's commands were: without waiting.
        _until(lambda: len(answers) >= 3, f"3 commands answered at once: {answers}")
        assert answers == [409] * 3, answers
    finally:
        _sql(platform, CLEAR, sandbox)
    for t in threads:
        t.join(timeout=60)
    # The admitted ones ran once the snapshot was over.
    assert sorted(answers) == [200] * PER_OWNER + [409] * 3, answers


def test_a_waiter_whose_key_is_revoked_is_answered_401(platform: Platform, sandbox: str) -> None:
    made = httpx.post(f"{platform.url}/v1/api-keys", json={"name": "waiter"}, headers=platform.user_headers)
    assert made.status_code in (200, 201), made.text
    key, key_id = made.json()["key"], made.json()["id"]
    answers: list[httpx.Response] = []

    def one() -> None:
        url = f"{platform.url}/v1/sandboxes/{sandbox}/exec"
        answers.append(httpx.post(url, json=TRUE, headers={"X-API-Key": key}, timeout=60))

    _sql(platform, MARK, sandbox)
    thread = threading.Thread(target=one)
    try:
        thread.start()
        thread.join(timeout=0.3)  # sent and held
        r = httpx.delete(f"{platform.url}/v1/api-keys/{key_id}", headers=platform.user_headers)
        assert r.status_code == 204, r.text
        thread.join(timeout=30)
        assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [(401, "access_revoked")]
    finally:
        _sql(platform, CLEAR, sandbox)
        thread.join(timeout=60)
