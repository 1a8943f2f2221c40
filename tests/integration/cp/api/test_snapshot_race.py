"""Calls that looked the sandbox up just before an E2B snapshot's mark, and so reach its agent
once the sandbox is paused, wait there for the snapshot's resume (agent/resume_holds.py,
session 35).

The race is made every time: the test pauses the sandbox at its agent as an E2B snapshot does
(``PauseSandbox`` with ``resume_after``) while its row still says ``running``, so every call
passes the CP's lookup and reaches a paused sandbox. Before, each was refused (409
``invalid_state``, an exec stream's error frame, E2B's "not running"); the CP's only guard was
the 100 ms it leaves between its mark and the pause. Now they are all answered once the test
resumes it. A pause without ``resume_after`` (a user's) is refused at once as before, and a
destroy lets held calls go.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from e2b import Sandbox
from websockets.sync.client import connect

from tests.harness.e2b import e2b_environment
from tests.harness.platform import Platform, api_sandbox
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.security.ca import CertificateAuthority
from warren.rpc import hostagent_pb2 as pb

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

HELD_S = 1.5  # how long the test keeps the sandbox paused with calls on their way


@pytest.fixture
def sandbox(platform: Platform) -> Iterator[str]:
    with api_sandbox(platform, runtime="runc") as sid:
        yield sid


def _agent(platform: Platform, method: str, request: Any) -> Any:
    """One call to the sandbox's agent, as the CP makes it (its CA's client certificate)."""

    async def call() -> Any:
        pool = HostClientPool(CertificateAuthority.load_or_create(platform.cp.home / "ca"))
        try:
            agent = platform.agents[0]
            client = pool.get_for(agent.host_uuid, agent.address)
            return await getattr(client.stub, method)(request, timeout=60)
        finally:
            await pool.close()

    return asyncio.run(call())


def _exec_stream(platform: Platform, sid: str) -> str:
    url = platform.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/exec/stream"
    with connect(url, additional_headers=platform.headers, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "cmd": "echo", "args": ["streamed"]}))
        out = ""
        while True:
            f = json.loads(ws.recv(timeout=60))
            if f["type"] == "stdout":
                out += f["data"]
            elif f["type"] == "exit":
                return f"exit {f['exit_code']} {out.strip()}"
            elif f["type"] == "error":
                return f"error {f.get('status')} {f.get('code')}"


def _terminal(platform: Platform, sid: str) -> str:
    url = platform.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/pty"
    with connect(url, additional_headers=platform.headers, open_timeout=30) as ws:
        start = {"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo termed"], "cols": 80, "rows": 24}
        ws.send(json.dumps(start))
        out = ""
        while True:
            f = ws.recv(timeout=60)
            if isinstance(f, bytes):
                out += f.decode(errors="replace")
                continue
            frame = json.loads(f)
            if frame["type"] == "exit":
                return f"exit {frame.get('exit_code')} {'termed' in out}"
            if frame["type"] == "error":
                return f"error {frame.get('status')} {frame.get('code')}"


def _rest(platform: Platform, sid: str, kind: str) -> str:
    base = f"{platform.url}/v1/sandboxes/{sid}"
    with httpx.Client(headers=platform.headers, timeout=60) as http:
        if kind == "exec":
            r = http.post(f"{base}/exec", json={"cmd": "echo", "args": ["unary"]})
            return f"{r.status_code} {r.json().get('stdout', '').strip() if r.status_code == 200 else r.text}"
        if kind == "write":
            r = http.post(f"{base}/files/write", data={"path": "/tmp/w"}, files={"file": ("w", b"written")})
            return f"{r.status_code}" if r.status_code == 204 else f"{r.status_code} {r.text}"
        r = http.post(f"{base}/files/list", json={"path": "/tmp"})
        return f"{r.status_code}" if r.status_code == 200 else f"{r.status_code} {r.text}"


def _envd_start(sbx: Sandbox) -> str:
    try:
        return f"exit {sbx.commands.run('echo envd', user='root').exit_code}"
    except Exception as e:  # the SDK's "not running" (SandboxException) and any other failure
        return f"{type(e).__name__}: {e}"


def _concurrently(calls: dict[str, Callable[[], str]]) -> tuple[dict[str, str], list[threading.Thread]]:
    answers: dict[str, str] = {}

    def run(name: str, fn: Callable[[], str]) -> None:
        try:
            answers[name] = fn()
        except Exception as e:
            answers[name] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=run, args=kv, daemon=True) for kv in calls.items()]
    for t in threads:
        t.start()
    return answers, threads


def test_calls_that_reach_a_snapshots_pause_wait_for_its_resume(platform: Platform, sandbox: str) -> None:
    with e2b_environment(platform, template="minimal"):
        sbx = Sandbox.connect(sandbox)
        _agent(platform, "PauseSandbox", pb.PauseSandboxRequest(sandbox_id=sandbox, resume_after=True))
        try:
            answers, threads = _concurrently(
                {
                    "exec stream": lambda: _exec_stream(platform, sandbox),
                    "terminal": lambda: _terminal(platform, sandbox),
                    "unary exec": lambda: _rest(platform, sandbox, "exec"),
                    "write": lambda: _rest(platform, sandbox, "write"),
                    "list": lambda: _rest(platform, sandbox, "list"),
                    "envd Start": lambda: _envd_start(sbx),
                }
            )
            time.sleep(HELD_S)
            held = dict(answers)  # none answered while the sandbox is paused
        finally:
            _agent(platform, "ResumeSandbox", pb.ResumeSandboxRequest(sandbox_id=sandbox, timeout_sec=-1))
        for t in threads:
            t.join(timeout=60)
    assert held == {}, held
    assert answers == {
        "exec stream": "exit 0 streamed",
        "terminal": "exit 0 True",
        "unary exec": "200 unary",
        "write": "204",
        "list": "200",
        "envd Start": "exit 0",
    }, answers


def test_a_pause_the_cp_does_not_end_refuses_at_once(platform: Platform, sandbox: str) -> None:
    """A user's pause (no ``resume_after``): a call that raced it is refused at once, as before."""
    _agent(platform, "PauseSandbox", pb.PauseSandboxRequest(sandbox_id=sandbox))
    try:
        t0 = time.monotonic()
        got = _exec_stream(platform, sandbox), _rest(platform, sandbox, "exec")
        took = time.monotonic() - t0
    finally:
        _agent(platform, "ResumeSandbox", pb.ResumeSandboxRequest(sandbox_id=sandbox, timeout_sec=-1))
    assert got[0] == "error 409 conflict" and got[1].startswith("409 "), got
    assert took < 20, took  # answered, not held (a held call waits for the resume)


def test_a_destroy_lets_held_calls_go(platform: Platform, sandbox: str) -> None:
    _agent(platform, "PauseSandbox", pb.PauseSandboxRequest(sandbox_id=sandbox, resume_after=True))
    answers, threads = _concurrently({"exec stream": lambda: _exec_stream(platform, sandbox)})
    time.sleep(HELD_S)
    assert answers == {}, answers
    _agent(platform, "DestroySandbox", pb.DestroySandboxRequest(sandbox_id=sandbox))
    threads[0].join(timeout=30)
    assert answers.get("exec stream", "").startswith("error "), answers
