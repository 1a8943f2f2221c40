"""Commands sent to a sandbox while it is paused for its own snapshot wait for its resume instead
of being refused (services/snapshot_hold.py, session 31), against a live platform.

E2B's snapshot (and so its fork) pauses a running sandbox, exports it and resumes it with the
same id. A client that keeps calling the sandbox meanwhile (Warren's unary exec and file reads,
E2B's envd ``Start``) had some of its calls refused with 409 ``invalid_state`` (E2B's "not
running"); now none is. A user's pause is answered at once as before, and so is a mark left by
a CP that died mid-snapshot once it is older than the snapshot's own bound. The mark lives in
the sandbox's row, so a mark written by another party (here: SQL, as another replica would)
holds the commands of this one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b import Sandbox
from sqlalchemy.ext.asyncio import create_async_engine

from tests.harness.cp import run_sql
from tests.harness.e2b import e2b_environment
from tests.harness.platform import Platform
from warren import ids
from warren.cp.db.engine import to_async_url
from warren.cp.services import snapshot_hold

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

TRUE = {"cmd": "/bin/true", "timeout_sec": 30}
SNAPSHOTS = 3  # E2B snapshots of the runc sandbox while the loop runs


def _sql(platform: Platform, statement: str, sid: str) -> Any:
    return asyncio.run(platform.sql(statement, s=ids.parse_id(ids.Kind.SANDBOX, sid)))


@pytest.fixture
def runc_sandbox(platform: Platform) -> Iterator[str]:
    sid = _create(platform, "runc")
    try:
        yield sid
    finally:
        httpx.delete(f"{platform.url}/v1/sandboxes/{sid}", headers=platform.headers, timeout=120)


def _create(platform: Platform, runtime: str) -> str:
    body = {"template": "minimal", "runtime": runtime, "memory_mb": 256, "timeout_sec": 0}
    r = httpx.post(f"{platform.url}/v1/sandboxes", json=body, headers=platform.headers, timeout=120)
    assert r.status_code == 201, r.text
    sid = str(r.json()["id"])
    # Something for the snapshot to export (a few MiB), and a file for the loop to read.
    script = "head -c 4M /dev/urandom > /root/data.bin && echo hello > /root/hello && sync"
    run = {"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 60}
    r = httpx.post(f"{platform.url}/v1/sandboxes/{sid}/exec", json=run, headers=platform.headers, timeout=90)
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return sid


class Loop:
    """Back-to-back calls on one sandbox from a thread, in turn: a unary exec, a file read and,
    with ``sbx``, E2B's ``commands.run`` (envd's process ``Start``); the answers counted by call
    and outcome. :meth:`snapshot` takes a snapshot once every kind of call has been answered,
    and the calls that overlapped one are counted (there is always one: the calls go on
    back to back, one at a time, from before the first snapshot to after the last)."""

    def __init__(self, platform: Platform, sid: str, *, sbx: Sandbox | None = None) -> None:
        self.platform, self.sid, self.sbx = platform, sid, sbx
        self.answers: Counter[str] = Counter()
        self.refusals: list[str] = []  # what a call that failed was answered
        self.overlapped = 0  # calls in flight while a snapshot was
        self._began = self._ended = 0  # snapshots begun and ended
        self._warm = threading.Event()  # every kind of call answered once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Loop:
        self._thread.start()
        assert self._warm.wait(timeout=60), self.answers
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def snapshot(self) -> str:
        self._began += 1
        try:
            return _e2b_snapshot(self.platform, self.sid)
        finally:
            self._ended += 1

    def _count(self, kind: str, r: httpx.Response, ok: bool) -> None:
        self.answers[f"{kind} {r.status_code if ok or r.status_code != 200 else 'wrong'}"] += 1
        if not ok:
            self.refusals.append(f"{kind}: {r.status_code} {r.text[:200]}")

    def _run(self) -> None:
        base = f"{self.platform.url}/v1/sandboxes/{self.sid}"
        kinds = 3 if self.sbx is not None else 2
        with httpx.Client(headers=self.platform.headers, timeout=60) as http:
            i = 0
            while not self._stop.is_set():
                ended_before = self._ended
                if i % kinds == 0:
                    r = http.post(f"{base}/exec", json=TRUE)
                    ok = r.status_code == 200 and r.json()["exit_code"] == 0
                    self._count("exec", r, ok)
                elif i % kinds == 1:
                    r = http.post(f"{base}/files/read", json={"path": "/root/hello"})
                    ok = r.status_code == 200 and r.content == b"hello\n"
                    self._count("read", r, ok)
                else:
                    assert self.sbx is not None
                    self.answers[f"envd {_run_true(self.sbx)}"] += 1
                # Begun before this call's answer, and not ended before the call was sent.
                self.overlapped += self._began > ended_before
                i += 1
                if i >= kinds:
                    self._warm.set()


def _run_true(sbx: Sandbox) -> str:
    try:
        got = sbx.commands.run("true", user="root")
    except Exception as e:  # the SDK's "not running" (SandboxException) and any other failure
        return type(e).__name__
    return "ok" if got.exit_code == 0 else "wrong"


def _e2b_snapshot(platform: Platform, sid: str) -> str:
    r = httpx.post(
        f"{platform.cp.e2b_url}/sandboxes/{sid}/snapshots",
        json={},
        headers={"X-API-KEY": platform.api_key},
        timeout=300,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["snapshotID"])


def _drop(platform: Platform, name: str) -> None:
    r = httpx.delete(f"{platform.url}/v1/snapshots/{name}", headers=platform.headers, timeout=60)
    assert r.status_code in (200, 204), r.text


def _status(platform: Platform, sid: str) -> tuple[str, Any]:
    got = httpx.get(f"{platform.url}/v1/sandboxes/{sid}", headers=platform.headers, timeout=30).json()
    return got["status"], got.get("paused_state")


def test_commands_wait_out_e2b_snapshots_of_a_runc_sandbox(platform: Platform, runc_sandbox: str) -> None:
    with e2b_environment(platform, template="minimal"):
        sbx = Sandbox.connect(runc_sandbox)
        with Loop(platform, runc_sandbox, sbx=sbx) as loop:
            for _ in range(SNAPSHOTS):
                _drop(platform, loop.snapshot())
    # Every call answered, none refused (409, the SDK's exception) or wrong.
    assert set(loop.answers) == {"exec 200", "read 200", "envd ok"}, (loop.answers, loop.refusals)
    assert loop.overlapped >= 1, loop.overlapped
    assert _status(platform, runc_sandbox) == ("running", None)


def test_a_gvisor_sandbox_too(platform: Platform) -> None:
    """One gVisor snapshot (a checkpoint to disk, ~2 s): the same."""
    sid = _create(platform, "gvisor")
    try:
        with Loop(platform, sid) as loop:
            _drop(platform, loop.snapshot())
        assert set(loop.answers) == {"exec 200", "read 200"}, (loop.answers, loop.refusals)
        assert loop.overlapped >= 1, loop.overlapped
        assert _status(platform, sid) == ("running", None)
    finally:
        httpx.delete(f"{platform.url}/v1/sandboxes/{sid}", headers=platform.headers, timeout=120)


def test_a_users_pause_is_refused_at_once(platform: Platform, runc_sandbox: str) -> None:
    url = f"{platform.url}/v1/sandboxes/{runc_sandbox}"
    r = httpx.post(f"{url}/pause", headers=platform.headers, timeout=120)
    assert r.status_code == 200, r.text
    # A short client timeout: a command that waited would not be answered within it.
    r = httpx.post(f"{url}/exec", json=TRUE, headers=platform.headers, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_state"), r.text
    r = httpx.post(f"{url}/files/read", json={"path": "/root/hello"}, headers=platform.headers, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_state"), r.text
    r = httpx.post(f"{url}/resume", headers=platform.headers, timeout=120)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/exec", json=TRUE, headers=platform.headers, timeout=30)
    assert r.status_code == 200, r.text


def test_the_mark_in_the_row_holds_commands_until_it_clears(platform: Platform, runc_sandbox: str) -> None:
    """The mark as another replica's snapshot writes it (SQL here, the sandbox still running on
    its host): commands sent meanwhile wait, and run once it clears."""
    url = f"{platform.url}/v1/sandboxes/{runc_sandbox}"
    mark = (
        "UPDATE sandboxes SET status = 'paused', paused_state = 'snapshot', last_updated = now() "
        "WHERE id = :s"
    )
    _sql(platform, mark, runc_sandbox)
    answers: list[int] = []

    def one() -> None:
        answers.append(httpx.post(f"{url}/exec", json=TRUE, headers=platform.headers, timeout=60).status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=0.3)  # the commands are sent and held (none answered yet)
        assert answers == [], answers
    finally:
        _sql(
            platform,
            "UPDATE sandboxes SET status = 'running', paused_state = NULL WHERE id = :s",
            runc_sandbox,
        )
    for t in threads:
        t.join(timeout=60)
    assert answers == [200] * 4, answers


def test_a_stale_mark_is_a_plain_pause(platform: Platform, runc_sandbox: str) -> None:
    """A mark its snapshot stopped refreshing (its CP died mid-snapshot) holds nothing once
    STALE_S have passed; before session 32 it held commands for the snapshot's whole 450 s."""
    url = f"{platform.url}/v1/sandboxes/{runc_sandbox}"
    stale = (
        "UPDATE sandboxes SET status = 'paused', paused_state = 'snapshot', "
        f"last_updated = now() - interval '{snapshot_hold.STALE_S + 1} seconds' WHERE id = :s"
    )
    _sql(platform, stale, runc_sandbox)
    try:
        r = httpx.post(f"{url}/exec", json=TRUE, headers=platform.headers, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_state"), r.text
    finally:
        _sql(
            platform,
            "UPDATE sandboxes SET status = 'running', paused_state = NULL WHERE id = :s",
            runc_sandbox,
        )


def test_a_running_snapshot_keeps_its_mark_fresh(
    platform: Platform, runc_sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark's refresh (``snapshot_hold.kept_fresh``, on a fast beat here) against the real
    database: the marked row's time moves on while the snapshot runs; an unmarked row's does not."""
    monkeypatch.setattr(snapshot_hold, "BEAT_S", 0.05)
    sb_uuid = ids.parse_id(ids.Kind.SANDBOX, runc_sandbox)
    age = "SELECT extract(epoch FROM now() - last_updated) FROM sandboxes WHERE id = :s"

    async def refreshed_age(mark: str | None) -> float:
        engine = create_async_engine(to_async_url(platform.cp.db_url))
        try:
            await run_sql(
                engine,
                "UPDATE sandboxes SET paused_state = :m, last_updated = now() - interval '20 seconds' "
                "WHERE id = :s",
                s=sb_uuid, m=mark,
            )  # fmt: skip
            async with snapshot_hold.kept_fresh(engine, sb_uuid):
                await asyncio.sleep(0.5)
            return float((await run_sql(engine, age, s=sb_uuid))[0][0])
        finally:
            await run_sql(engine, "UPDATE sandboxes SET paused_state = NULL WHERE id = :s", s=sb_uuid)
            await engine.dispose()

    assert asyncio.run(refreshed_age(snapshot_hold.TRANSIENT)) < 5
    assert asyncio.run(refreshed_age(None)) >= 20
