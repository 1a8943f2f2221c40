"""E2B's SDK (``e2b``, unchanged, sync) ``sandbox.commands`` against a live platform's envd
plane (docs/e2b.md §3.1), and raw Connect calls for what the SDK never sends."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from e2b import CommandExitException, Sandbox
from e2b.exceptions import (
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
    SandboxNotRunningException,
    TimeoutException,
)
from packaging.version import Version

from tests.harness.e2b import E2BEnv
from tests.integration.e2b.envd_wire import Envd, end_error, envelope, envelopes

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def sbx(e2b_env: E2BEnv) -> Iterator[Sandbox]:
    s = Sandbox.create(template=e2b_env.template, timeout=600, envs={"FROM_CREATE": "c v"})
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def envd(e2b_env: E2BEnv, sbx: Sandbox) -> Envd:
    return Envd(e2b_env.url, sbx.sandbox_id)


def poll(what: str, check: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _running_with(sbx: Sandbox, marker: str) -> bool:
    return any(marker in " ".join(p.args) for p in sbx.commands.list())


# ------------------------------------------------------------------------------------ the SDK


def test_run_foreground_with_callbacks(sbx: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    r = sbx.commands.run("echo hello; echo oops >&2; printf 'é'", on_stdout=out.append, on_stderr=err.append)
    assert (r.exit_code, r.stdout, r.stderr, r.error) == (0, "hello\né", "oops\n", None)
    assert "".join(out) == "hello\né" and "".join(err) == "oops\n"


def test_nonzero_exit_raises(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo partial; exit 3")
    assert (e.value.exit_code, e.value.stdout, e.value.error) == (3, "partial\n", "exit status 3")


def test_env_cwd_and_users(sbx: Sandbox) -> None:
    assert sbx.commands.run("echo $FOO", envs={"FOO": "bar baz"}).stdout == "bar baz\n"
    assert sbx.commands.run("echo $FROM_CREATE").stdout == "c v\n"
    assert sbx.commands.run("whoami; pwd").stdout == "user\n/home/user\n"
    # No cwd: the template's working directory (envd's default workdir), whoever the user.
    assert sbx.commands.run("whoami; pwd", user="root").stdout == "root\n/home/user\n"
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("true", user="nobody-here")  # type: ignore[arg-type]
    with pytest.raises(NotFoundException):
        sbx.commands.run("true", cwd="/no/such/dir")
    sbx.commands.run("mkdir -p r", user="root", cwd="/root")
    assert sbx.commands.run("pwd", user="root", cwd="r").stdout == "/root/r\n"  # under root's home
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    sbx.commands.run("mkdir -p work/sub")
    assert sbx.commands.run("pwd", cwd="work/sub").stdout == "/home/user/work/sub\n"  # under the home


def test_background_kill_and_list(sbx: Sandbox) -> None:
    marker = uuid.uuid4().hex
    h = sbx.commands.run(f"sleep 300 # {marker}", background=True)
    listed = [p for p in sbx.commands.list() if p.pid == h.pid]
    assert listed and listed[0].cmd == "/bin/bash" and marker in " ".join(listed[0].args)
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert (e.value.exit_code, e.value.error) == (-1, "signal: killed")
    assert not _running_with(sbx, marker)
    assert sbx.commands.kill(h.pid) is False  # exited: envd's not_found
    assert sbx.commands.kill(2**31 - 1) is False


def test_send_stdin(sbx: Sandbox) -> None:
    h = sbx.commands.run("head -n 1", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "line one\n")
    assert h.wait().stdout == "line one\n"
    with pytest.raises(NotFoundException, match=f"process with pid {h.pid} not found"):
        sbx.commands.send_stdin(h.pid, "late\n")  # exited: gone, as in envd
    # Without stdin the command reads EOF at once instead of waiting for input.
    assert sbx.commands.run("cat; echo eof").stdout == "eof\n"


def test_stream_input(sbx: Sandbox) -> None:
    h = sbx.commands.run("head -c 6", background=True, stdin=True)
    sbx.commands.stream_input(h.pid, ["ab", b"cd", "ef"])
    assert h.wait().stdout == "abcdef"
    with pytest.raises(NotFoundException, match=f"process with pid {h.pid} not found"):
        sbx.commands.stream_input(h.pid, ["late"])  # exited: gone, as in envd (the guest's kind)
    with pytest.raises(NotFoundException):
        sbx.commands.stream_input(2**31 - 1, ["x"])


def test_close_stdin_as_the_envd_version_allows(sbx: Sandbox) -> None:
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "abc")
    if sbx._envd_version >= Version("0.5.2"):
        sbx.commands.close_stdin(h.pid)
    else:  # the SDK refuses before any request; the RPC itself is served (test_raw_close_stdin)
        with pytest.raises(SandboxException, match="closing stdin"):
            sbx.commands.close_stdin(h.pid)
        sbx.commands.send_stdin(h.pid, "\n")
        sbx.commands.kill(h.pid)
        with pytest.raises(CommandExitException):
            h.wait()
        return
    assert h.wait().stdout == "abc"


def test_command_survives_its_client_and_connect_replays(sbx: Sandbox) -> None:
    flag = f"/tmp/go-{uuid.uuid4().hex}"
    script = f"echo before; while [ ! -e {flag} ]; do sleep 0.05; done; echo after"
    h = sbx.commands.run(script, background=True)
    pid = h.pid
    h.disconnect()
    assert any(p.pid == pid for p in sbx.commands.list())
    again = sbx.commands.connect(pid)  # replays what it wrote (Warren keeps its last 1 MiB)
    sbx.commands.run(f"touch {flag}")
    assert again.wait().stdout == "before\nafter\n"
    with pytest.raises(NotFoundException):  # exited: gone, as in envd
        sbx.commands.connect(pid)


def test_command_outliving_its_timeout_is_killed(sbx: Sandbox) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises((CommandExitException, TimeoutException)):
        sbx.commands.run(f"sleep 120 # {marker}", timeout=2)
    poll("the timed-out command to be killed", lambda: not _running_with(sbx, marker))
    # In the background, with its stream gone: the deadline is the process's, not the stream's.
    # The command must still be there when first listed: 3 s is enough on a quiet machine, and a
    # loaded one that listed it only after its end runs it again with twice the timeout (rather
    # than every run waiting out the slowest case's 15 s).
    for timeout in (3, 6, 12, 24):
        marker = uuid.uuid4().hex
        h = sbx.commands.run(f"sleep 120 # {marker}", background=True, timeout=timeout)
        h.disconnect()
        if _running_with(sbx, marker):
            break
    else:
        raise AssertionError(f"a background command was never listed before its timeout ({timeout} s)")
    poll("the background command to be killed at its timeout", lambda: not _running_with(sbx, marker))


def test_sandbox_killed_while_a_command_runs(e2b_env: E2BEnv) -> None:
    s = Sandbox.create(template=e2b_env.template, timeout=120)
    h = s.commands.run("sleep 300", background=True)  # its stream is open from here on
    s.kill()
    with pytest.raises((SandboxNotRunningException, CommandExitException)) as e:
        h.wait()
    if isinstance(e.value, CommandExitException):  # the kill's SIGKILL arrived before the end
        assert e.value.exit_code == -1
    with pytest.raises(SandboxNotRunningException):
        s.commands.run("true")


# ----------------------------------------------------------------------------- raw Connect


def test_envs_is_the_sandbox_environment(envd: Envd) -> None:
    r = httpx.get(f"{envd.url}/envs", headers=envd.headers(), timeout=30)
    assert r.status_code == 200
    env = r.json()
    assert env["FROM_CREATE"] == "c v" and env["PATH"]
    r = httpx.get(f"{envd.url}/envs", headers=envd.headers(**{"X-Access-Token": "ea_wrong"}), timeout=30)
    assert r.status_code == 401


def test_client_disconnect_mid_stream_leaves_the_process(sbx: Sandbox, envd: Envd) -> None:
    marker = uuid.uuid4().hex
    start = {"process": {"cmd": "/bin/bash", "args": ["-c", f"while :; do echo {marker}; sleep 0.1; done"]}}
    h = envd.headers() | {"Content-Type": "application/connect+json"}
    with httpx.stream(
        "POST", f"{envd.url}/process.Process/Start", content=envelope(start), headers=h, timeout=60
    ) as r:
        first = next(r.iter_bytes())  # the start envelope, then we hang up
    pid = envelopes(first[: 5 + int.from_bytes(first[1:5], "big")])[0][1]["event"]["start"]["pid"]
    time.sleep(0.3)  # let the CP notice the hang-up; the process must run on regardless
    assert any(p.pid == pid for p in sbx.commands.list())
    assert sbx.commands.kill(pid) is True


def test_a_slow_reader_holds_its_command_back_instead_of_losing_output(envd: Envd) -> None:
    total = 32 << 20  # four times what the guest lets any other reader fall behind
    start = {"process": {"cmd": "/bin/bash", "args": ["-c", f"head -c {total} /dev/zero; echo -n end"]}}
    h = envd.headers() | {"Content-Type": "application/connect+json"}
    got, end = 0, None
    with httpx.stream(
        "POST", f"{envd.url}/process.Process/Start", content=envelope(start), headers=h, timeout=60
    ) as r:
        raw = r.iter_raw(1 << 16)
        buf = bytearray(next(raw))
        # A reader that stalls: it is slow on purpose, not waiting for anything it could poll.
        time.sleep(2)
        for chunk in raw:
            buf += chunk
            while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                size = int.from_bytes(buf[1:5], "big")
                flags, msg = buf[0], json.loads(buf[5 : 5 + size])
                del buf[: 5 + size]
                if flags & 2:
                    assert msg == {}, msg
                    continue
                ev = msg["event"]
                if "data" in ev:
                    got += len(base64.b64decode(ev["data"]["stdout"]))
                end = ev.get("end", end)
    assert end is not None and end["exitCode"] == 0
    assert got == total + len("end")


def test_a_connect_detached_for_not_reading_is_aborted_and_the_process_runs_on(
    sbx: Sandbox, envd: Envd
) -> None:
    """A Connect read slower than its process writes: the guest cuts it at lag.py's 8 MiB, and
    the stream ends ``aborted`` saying so (before: ``unavailable``, "the process's output stream
    broke off"), the process running on (session 28)."""
    h = sbx.commands.run("yes", background=True)
    pid = h.pid
    h.disconnect()
    hdr = envd.headers() | {"Content-Type": "application/connect+json"}
    body, buf, last = envelope({"process": {"pid": pid}}), bytearray(), None
    deadline = time.monotonic() + 90  # seconds in practice; slack for load
    with httpx.stream(
        "POST", f"{envd.url}/process.Process/Connect", content=body, headers=hdr, timeout=60
    ) as r:
        for chunk in r.iter_raw(1 << 16):
            buf += chunk
            while len(buf) >= 5 and len(buf) >= 5 + (size := int.from_bytes(buf[1:5], "big")):
                if buf[0] & 2:
                    last = json.loads(buf[5 : 5 + size])
                del buf[: 5 + size]
            if last is not None or time.monotonic() > deadline:
                break
            time.sleep(len(chunk) / (4 << 20))  # 4 MiB/s: far slower than yes writes
    assert last is not None and last.get("error", {}).get("code") == "aborted", last
    assert "not read" in last["error"]["message"], last
    assert any(p.pid == pid for p in sbx.commands.list())
    assert sbx.commands.kill(pid) is True


def test_raw_close_stdin_and_keepalive(envd: Envd) -> None:
    start = {"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 1.5; cat"]}, "stdin": True}
    h = envd.headers() | {"Content-Type": "application/connect+json", "Keepalive-Ping-Interval": "1"}
    with httpx.stream(
        "POST", f"{envd.url}/process.Process/Start", content=envelope(start), headers=h, timeout=60
    ) as r:
        chunks = r.iter_bytes()
        body = next(chunks)
        pid = envelopes(body)[0][1]["event"]["start"]["pid"]
        r2 = envd.unary("SendInput", {"process": {"pid": pid}, "input": {"stdin": "eHl6"}})
        assert r2.status_code == 200
        assert envd.unary("CloseStdin", {"process": {"pid": pid}}).status_code == 200
        body += b"".join(chunks)
    events = [m["event"] for f, m in envelopes(body) if not f & 2]
    assert {"keepalive": {}} in events  # idle for over a second while it slept
    data = b"".join(base64.b64decode(e["data"]["stdout"]) for e in events if "data" in e)
    assert data == b"xyz" and events[-1]["end"]["exitCode"] == 0


def _first_event(
    envd: Envd, method: str, msg: dict[str, object]
) -> tuple[httpx.Response, Iterator[bytes], bytes, dict[str, Any]]:
    """A server stream opened and read up to its first message: the response, the rest of its
    body, what was read past the first envelope, and that first message."""
    h = envd.headers() | {"Content-Type": "application/connect+json"}
    req = httpx.Request("POST", f"{envd.url}/process.Process/{method}", content=envelope(msg), headers=h)
    r = httpx.Client(timeout=60).send(req, stream=True)
    body, buf = r.iter_raw(), b""
    while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[1:5], "big"):
        buf += next(body)
    size = 5 + int.from_bytes(buf[1:5], "big")
    return r, body, buf[size:], envelopes(buf[:size])[0][1]


def test_tags_select_a_process(envd: Envd) -> None:
    tag = f"web-{uuid.uuid4().hex[:8]}"
    r, _, _, ev = _first_event(envd, "Start", {"process": {"cmd": "/bin/sleep", "args": ["300"]}, "tag": tag})
    r.close()  # hang up: it runs on
    pid = ev["event"]["start"]["pid"]
    listed = [p for p in envd.unary("List", {}).json()["processes"] if p["pid"] == pid]
    assert listed == [{"config": {"cmd": "/bin/sleep", "args": ["300"], "envs": {}}, "pid": pid, "tag": tag}]
    r, body, extra, ev = _first_event(envd, "Connect", {"process": {"tag": tag}})
    assert ev == {"event": {"start": {"pid": pid}}}
    assert envd.unary("SendSignal", {"process": {"tag": tag}, "signal": "SIGNAL_SIGTERM"}).status_code == 200
    rest = envelopes(extra + b"".join(body))
    r.close()
    end = {"exitCode": -1, "exited": False, "status": "signal: terminated", "error": "signal: terminated"}
    assert rest[-2][1]["event"]["end"] == end and rest[-1] == (2, {})
    r2 = envd.unary("SendSignal", {"process": {"tag": tag}, "signal": "SIGNAL_SIGTERM"})
    assert r2.status_code == 404


def test_attacks_are_refused(envd: Envd, e2b_env: E2BEnv) -> None:
    # Oversized and malformed envelopes, bad base64, signals envd does not know.
    huge = envelope({"process": {"cmd": "/bin/true", "args": ["x" * (5 << 20)]}})
    h = envd.headers() | {"Content-Type": "application/connect+json"}
    r = httpx.post(f"{envd.url}/process.Process/Start", content=huge, headers=h, timeout=60)
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted"
    truncated = b"\x00\x00\x00\x00\x05{"
    r = httpx.post(f"{envd.url}/process.Process/Start", content=truncated, headers=h, timeout=60)
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = envd.unary("SendInput", {"process": {"pid": 1}, "input": {"stdin": "!!not base64!!"}})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    for sig in ("SIGNAL_SIGSTOP", 19, "SIGKILL", None, True):
        r = envd.unary("SendSignal", {"process": {"pid": 1}, "signal": sig})
        assert r.status_code == 400, (sig, r.text)
    for pid in (0, -1, 2**31, "1; rm", True):
        r = envd.unary("SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        assert r.status_code == 400, (pid, r.text)
    # Huge env and args within the platform's limits only.
    env = {f"V{i}": "x" for i in range(300)}
    start = {"process": {"cmd": "/bin/true", "envs": env}}
    assert end_error(envd.stream("Start", envelope(start)))["code"] == "invalid_argument"
    start = {"process": {"cmd": "/bin/true", "args": ["a"] * 5000}}
    assert end_error(envd.stream("Start", envelope(start)))["code"] == "invalid_argument"
    # An absurd deadline: beyond the platform's exec maximum.
    true = envelope({"process": {"cmd": "/bin/true"}})
    items = envd.stream("Start", true, **{"Connect-Timeout-Ms": "9" * 12})
    assert end_error(items)["code"] == "invalid_argument"
    r = envd.unary("List", {}, **{"Connect-Timeout-Ms": "-5"})
    assert r.status_code == 400


class _Pid:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def envd_list(envd: Envd) -> list[_Pid]:
    return [_Pid(p["pid"]) for p in envd.unary("List", {}).json().get("processes", [])]


def test_a_pid_of_another_sandbox_is_not_found(e2b_env: E2BEnv, envd: Envd) -> None:
    other = Sandbox.create(template=e2b_env.template, timeout=120)
    try:
        mine = {p.pid for p in envd_list(envd)}
        h = other.commands.run("sleep 300", background=True)
        while h.pid in mine:  # pid namespaces: the same number may be one of this sandbox's
            h = other.commands.run("sleep 300", background=True)
        r = envd.unary("SendSignal", {"process": {"pid": h.pid}, "signal": "SIGNAL_SIGKILL"})
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert any(p.pid == h.pid for p in other.commands.list())  # untouched
        items = envd.stream("Connect", envelope({"process": {"pid": h.pid}}))
        assert end_error(items)["code"] == "not_found"
        # Its token does not reach this sandbox, nor this one's that one.
        wrong = Envd(envd.url, other.sandbox_id).headers()["X-Access-Token"]
        r = envd.unary("List", {}, **{"X-Access-Token": wrong})
        assert r.status_code == 401
    finally:
        other.kill()
