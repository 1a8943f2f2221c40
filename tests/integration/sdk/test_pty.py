"""Terminals end to end: ``sbx.pty`` (sync and async) over the CP's ``/v1/sandboxes/{id}/pty``
WebSocket to a real sandbox, and the WebSocket's refusals of hostile clients."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from tests.harness.platform import Platform
from warren import AsyncSandbox, Sandbox
from warren.sdk import NotFoundError

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(memory_mb=256, **platform.sdk()) as s:
        yield s


class Screen:
    """What a terminal printed, with a wait for a substring."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.buf += data
            self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 60.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: needle in self.buf, timeout), bytes(self.buf[-2000:])


def _until_sleeping(sbx: Sandbox) -> None:
    """Until the shell's `sleep` runs (so Ctrl-C reaches it, not the prompt)."""
    deadline = time.monotonic() + 60
    while sbx.commands.run("grep -qx sleep /proc/[0-9]*/comm").exit_code != 0:
        assert time.monotonic() < deadline, "sleep never started"


def test_shell_tty_resize_ctrl_c_reconnect_exit(sbx: Sandbox) -> None:
    scr = Screen()
    t = sbx.pty.create(cols=100, rows=30, on_data=scr)
    t.send_input("tty; stty size\n")
    scr.wait_for(b"30 100")
    assert b"/dev/pts/" in scr.buf
    t.resize(120, 40)
    t.send_input("stty size\n")
    scr.wait_for(b"40 120")
    # Ctrl-C as a signal frame, then as the byte itself: `sleep 100` stops, the shell lives on.
    t.send_input("sleep 100\n")
    _until_sleeping(sbx)
    t.send_signal(2)
    t.send_input("echo one-$((0+1))\n")
    scr.wait_for(b"one-1")
    t.send_input("sleep 100\n")
    _until_sleeping(sbx)
    t.send_input(b"\x03")
    t.send_input("echo two-$((1+1))\n")
    scr.wait_for(b"two-2")
    pid = t.pid
    t.disconnect()
    later = Screen()
    r = sbx.pty.connect(pid, on_data=later)
    later.wait_for(b"two-2")  # the scrollback
    r.send_input("echo three-$((1+2)); exit 4\n")
    assert r.wait(timeout=20) == 4
    assert b"three-3" in later.buf
    with pytest.raises(NotFoundError, match=f"no terminal with pid {2**31 - 1}"):
        sbx.pty.connect(2**31 - 1)


def test_cmd_user_env_and_kill(sbx: Sandbox) -> None:
    scr = Screen()
    t = sbx.pty.create(cmd="echo $FOO $TERM; id -un; exit 3", envs={"FOO": "bar"}, on_data=scr)
    assert t.wait(timeout=20) == 3
    assert b"bar xterm-256color" in scr.buf and b"root" in scr.buf
    k = sbx.pty.create(cmd=["sleep", "100"])
    assert k.kill() is True
    assert k.wait(timeout=20) == -9


async def test_async_terminal(platform: Platform, sbx: Sandbox) -> None:
    seen = bytearray()
    got = asyncio.Event()

    async def on_data(b: bytes) -> None:
        seen.extend(b)
        if b"async-ok" in seen:
            got.set()

    a = await AsyncSandbox.connect(sbx.id, **platform.sdk())
    try:
        t = await a.pty.create(on_data=on_data, cmd="/bin/sh")
        await t.send_input("echo async-$((7-7))k\n".replace("$((7-7))k", "ok"))
        await asyncio.wait_for(got.wait(), 60)
        await t.send_input("exit 2\n")
        assert await t.wait(timeout=60) == 2
    finally:
        await a.close()


def _ws(platform: Platform, sid: str, headers: dict[str, str] | None = None) -> ws_client.ClientConnection:
    url = platform.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/pty"
    return ws_client.connect(url, additional_headers=headers or platform.headers, max_size=None)


def _error(conn: ws_client.ClientConnection) -> dict[str, object]:
    while True:
        msg = conn.recv(timeout=60)
        if isinstance(msg, str):
            frame = json.loads(msg)
            if frame["type"] == "error":
                return dict(frame)


def test_hostile_clients_get_clear_errors(platform: Platform, sbx: Sandbox) -> None:
    cases: list[tuple[str | bytes, str]] = [
        ("{not json", "must be JSON"),
        ("[1]", "JSON object"),
        (b"\x00binary-first", "text frames"),
        (json.dumps({"type": "start", "cols": 0, "rows": 24}), "cols must be an integer in 1..1000"),
        (json.dumps({"type": "start", "cols": 80, "rows": 100000}), "rows must be an integer in 1..1000"),
        (json.dumps({"type": "start", "cols": 80, "rows": 24, "user": "../../etc"}), "invalid user"),
        (json.dumps({"type": "connect", "pid": "1"}), "pid must be an integer"),
        ("x" * (300 << 10), "at most"),
    ]
    for first, words in cases:
        with _ws(platform, sbx.id) as c:
            c.send(first)
            err = _error(c)
            assert words in str(err["message"]), (first[:60], err)
    # Mid-session: a huge input frame, a bad resize, bad JSON: an error, then the end of this
    # connection only; the terminal lives on and answers a reconnect.
    mid: list[tuple[str | bytes, str]] = [
        (b"x" * (65 << 10), "too_large"),
        ('{"type":"resize","cols":5}', "invalid_request"),
        ("nope", "invalid_request"),
        ('{"type":"resize","cols":100000,"rows":5}', "invalid_request"),
    ]
    for bad, code in mid:
        with _ws(platform, sbx.id) as c:
            c.send(json.dumps({"type": "start", "cols": 80, "rows": 24, "cmd": "/bin/cat"}))
            pid = json.loads(c.recv(timeout=60))["pid"]
            c.send(bad)
            assert _error(c)["code"] == code
        with _ws(platform, sbx.id) as c:
            c.send(json.dumps({"type": "connect", "pid": pid}))
            assert json.loads(c.recv(timeout=60)) == {"type": "started", "pid": pid}
            c.send(json.dumps({"type": "signal", "signal": 9}))
            frame: str | bytes = b""
            while not isinstance(frame, str) or json.loads(frame)["type"] != "exit":
                frame = c.recv(timeout=60)
            assert json.loads(frame)["exit_code"] == -9


def test_other_team_and_no_credentials(platform: Platform, sbx: Sandbox) -> None:
    r = httpx.post(
        platform.url + "/v1/auth/signup",
        json={"email": f"pty{time.time_ns()}@example.com", "password": "correct horse battery", "name": "O"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    other = {"Authorization": f"Bearer {r.json()['token']}"}
    with pytest.raises(InvalidStatus) as e:
        _ws(platform, sbx.id, other)
    assert e.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as e:
        _ws(platform, sbx.id, {"X-API-Key": "wk_bogus"})
    assert e.value.response.status_code == 401
