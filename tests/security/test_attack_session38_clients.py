"""Session 38: the client side again. What a hostile (or broken) server makes the SDK and the
`warren` CLI do on the user's machine, and a command's bytes the CLI changed on their way out.

The hostile servers are small local ones speaking the control plane's real shapes (a listing's
pages, a build's log reads, the exec stream's frames); the clients are the real SDK (sync and
async) and the real `warren` CLI (a subprocess: its raw stdout bytes are what a user's file gets).
The last test runs a real sandbox's bytes through the real CLI on the real platform.

Found (the tests that failed until fixed):
- `files.list` (sync and async) followed a server's ``X-Next-Cursor`` for as long as it named
  one, and a cursor it had sent before too: a listing without end, every page's entries held;
- `warren invitations list` likewise (an empty ``X-Next-Cursor`` even restarted it at the first
  page), and `warren template logs` replayed a build's log for as long as the server handed on
  a new offset;
- `warren sandbox exec` wrote a command's output as text decoded with replacement: bytes that
  are no UTF-8 (`cat /bin/ls > out`, a tarball, an image) came out as U+FFFD, so ``out`` was not
  the file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import ServerConnection

from tests.integration.cli.test_cli import cli_env, js, run
from tests.security.test_attack_session37_clients import API_KEY, SID, HostileServer, cli, hostile
from warren.sdk import AsyncSandbox, Sandbox, WarrenError

__all__ = ["cli_env", "hostile"]  # the fixtures, from the CLI's own tests and session 37's

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]

# A hostile server pages until the client stops; this one gives up here so that a client without
# a bound ends (and its test fails) instead of hanging. Every bound the clients keep is below it.
GIVE_UP = 3000

# (status, JSON body, headers) for a request's path, query and JSON body.
Route = Callable[[str, dict[str, str], Any], tuple[int, Any, dict[str, str]]]


class PagingServer:
    """A control plane on plain HTTP/1.1 (GET and POST: the files routes are POSTs) whose routes
    are ``(method, path) -> Route``; counts the requests each route got."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Head and body in one write: written apart, each answer waits out a delayed ACK.
            wbufsize = 1 << 16

            def _serve(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                server.hits[url.path] = server.hits.get(url.path, 0) + 1
                route = server.routes.get((method, url.path))
                status, answer, headers = (
                    route(url.path, dict(urllib.parse.parse_qsl(url.query)), body)
                    if route
                    else (404, {"error": {"code": "not_found", "message": "no such route"}}, {})
                )
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.routes[("GET", f"/v1/sandboxes/{SID}")] = lambda p, q, b: (200, _sandbox_row(), {})
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _sandbox_row() -> dict[str, Any]:
    return {
        "id": SID, "status": "running", "template": "minimal", "vcpus": 1, "memory_mb": 512,
        "timeout_sec": 300, "created_at": "2026-12-07T22:00:00Z", "runtime": "runc",
    }  # fmt: skip


@pytest.fixture
def pager() -> Iterator[PagingServer]:
    s = PagingServer()
    try:
        yield s
    finally:
        s.close()


def _entry(n: int) -> dict[str, Any]:
    return {
        "name": f"f{n}", "path": f"/root/f{n:08d}", "type": "file", "size": 1, "mode": 420,
        "permissions": "-rw-r--r--", "owner": "root", "group": "root",
        "modified_time": "2026-12-07T22:00:00Z",
    }  # fmt: skip


def _list_pages(cursor_of: Callable[[int], str]) -> Route:
    """``files/list`` pages of one entry each, the n-th naming ``cursor_of(n)`` as the next one,
    until GIVE_UP pages were asked for."""
    asked = {"n": 0}

    def route(path: str, query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        asked["n"] += 1
        n = asked["n"]
        more = n < GIVE_UP
        headers = {"X-Has-More": "true", "X-Next-Cursor": cursor_of(n)} if more else {}
        return 200, [_entry(n)], headers

    return route


LIST_PATH = f"/v1/sandboxes/{SID}/files/list"


def _list_sync(url: str) -> Any:
    sbx = Sandbox.connect(SID, resume=False, url=url, api_key=API_KEY)
    try:
        return sbx.files.list("/root")
    finally:
        sbx.close()


def _list_async(url: str) -> Any:
    async def go() -> Any:
        sbx = await AsyncSandbox.connect(SID, resume=False, url=url, api_key=API_KEY)
        try:
            return await sbx.files.list("/root")
        finally:
            await sbx.close()

    return asyncio.run(go())


@pytest.mark.parametrize("lister", [_list_sync, _list_async], ids=["sync", "async"])
def test_files_list_does_not_page_for_ever(pager: PagingServer, lister: Callable[[str], Any]) -> None:
    """The server names a next page after every page (a fresh cursor each time): ``files.list``
    follows it for as long as it does, holding every entry. A directory the platform lists fits in
    1000 of its pages (10 000 entries each); past them the listing is a bad response."""
    pager.routes[("POST", LIST_PATH)] = _list_pages(lambda n: f"/root/f{n:08d}")
    got: Any = None
    with pytest.raises(WarrenError) as caught:
        got = lister(pager.url)
    asked = pager.hits.get(LIST_PATH, 0)
    assert asked <= 1000, f"files.list followed {asked} pages ({len(got or [])} entries) of a server's"
    assert caught.value.code == "bad_response" and "1000 pages" in caught.value.message


@pytest.mark.parametrize("lister", [_list_sync, _list_async], ids=["sync", "async"])
@pytest.mark.parametrize("cursor", ["again", ""], ids=["same-cursor", "empty-cursor"])
def test_files_list_stops_at_a_cursor_it_was_given_before(
    pager: PagingServer, lister: Callable[[str], Any], cursor: str
) -> None:
    """The server names the same next page every time (or ``""``, the first page's): the client
    asks for the same page again and again. A cursor followed once is not followed twice."""
    pager.routes[("POST", LIST_PATH)] = _list_pages(lambda n: cursor)
    with pytest.raises(WarrenError) as caught:
        lister(pager.url)
    asked = pager.hits.get(LIST_PATH, 0)
    assert asked <= 2, f"files.list asked for the same page {asked} times"
    assert caught.value.code == "bad_response"


# ----------------------------------------------------------------------------------- the CLI


def _invitation(n: int) -> dict[str, Any]:
    return {
        "id": f"inv-s38-{n}", "team_id": f"team-{n}", "team_name": f"Team {n}", "role": "member",
        "invited_by": "someone@example.com", "expires_at": "2026-12-14T00:00:00Z",
    }  # fmt: skip


def _invitation_pages(cursor_of: Callable[[int], str]) -> Route:
    asked = {"n": 0}

    def route(path: str, query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        asked["n"] += 1
        n = asked["n"]
        return 200, [_invitation(n)], {"X-Next-Cursor": cursor_of(n)} if n < GIVE_UP else {}

    return route


@pytest.mark.parametrize(
    "cursor_of",
    [lambda n: f"c{n}", lambda n: "again", lambda n: ""],
    ids=["fresh-cursors", "same-cursor", "empty-cursor"],
)
def test_invitations_list_does_not_page_for_ever(
    pager: PagingServer, tmp_path: Path, cursor_of: Callable[[int], str]
) -> None:
    """`warren invitations list` followed ``X-Next-Cursor`` for as long as the server sent one;
    an empty one even sent it back to the first page. The invitee's list is 100 a page: 100
    pages are 10 000 invitations, past any one person's. Past them, or at a cursor it was given
    before, the CLI stops with an error (exit 1), not a table."""
    pager.routes[("GET", "/v1/invitations")] = _invitation_pages(cursor_of)
    code, out, err, _ = cli(pager.url, "invitations", "list", "--json", home=tmp_path, timeout=300)
    asked = pager.hits.get("/v1/invitations", 0)
    assert asked <= 100, f"`warren invitations list` followed {asked} pages (exit {code})"
    assert code == 1 and b"bad_response" in err and out == b"", (code, err[-300:])


def test_template_logs_does_not_read_for_ever(pager: PagingServer, tmp_path: Path) -> None:
    """`warren template logs NAME BUILD` replays a log by offsets until a read brings nothing
    new; a server that always has a little more keeps it reading (and printing) for ever. A
    log is at most WARREN_BUILD_MAX_LOG_MB (16 by default), read 1 MiB at a time: past 1024
    reads the CLI stops with an error."""
    base = "/v1/templates/web/builds/bld-s38"
    info = {"build_id": "bld-s38", "name": "web", "status": "running", "step": 1, "steps": 1}
    pager.routes[("GET", base)] = lambda p, q, b: (200, info, {})
    line = "still building\n"

    def read(path: str, query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        offset = int(query.get("offset", "0"))
        more = pager.hits[path] < GIVE_UP
        data = line if more else ""
        return 200, {"data": data, "offset": offset, "next_offset": offset + len(data)}, {}

    pager.routes[("GET", base + "/log")] = read
    code, _, err, _ = cli(pager.url, "template", "logs", "web", "bld-s38", home=tmp_path, timeout=300)
    reads = pager.hits.get(base + "/log", 0)
    assert reads <= 1024, f"`warren template logs` read the log {reads} times (exit {code})"
    assert code == 1 and b"bad_response" in err, (code, err[-300:])


# ------------------------------------------------------------------------ a command's bytes

# Not UTF-8 anywhere: lone continuation bytes, a NUL, 0xff/0xfe, a sequence cut short.
NOT_UTF8 = b"\xff\xfe\x00\x80ELF\x02\x01\xc3\x28\xe2\x82" + bytes(range(256))


def _binary_exec(out: bytes, err: bytes) -> Callable[[ServerConnection], None]:
    """The exec stream's shapes: start, ``out`` on stdout and ``err`` on stderr (base64, in
    frames that cut it anywhere), exit 0."""

    def handler(conn: ServerConnection) -> None:
        json.loads(conn.recv())  # the start frame
        conn.send(json.dumps({"type": "start", "pid": 7}))
        for kind, data in (("stdout", out), ("stderr", err)):
            for i in range(0, len(data), 7):
                piece = base64.b64encode(data[i : i + 7]).decode()
                conn.send(json.dumps({"type": kind, "data_b64": piece}))
        conn.send(json.dumps({"type": "exit", "exit_code": 0}))
        try:
            conn.recv(timeout=5)
        except Exception:  # the client closed: the end either way
            return

    return handler


def test_sandbox_exec_writes_a_commands_bytes_as_they_are(hostile: HostileServer, tmp_path: Path) -> None:
    """`warren sandbox exec sb-… -- cat /bin/ls > out` must leave /bin/ls in ``out``. The CLI
    handed the SDK text callbacks, which decode with replacement: every byte that is no UTF-8
    became U+FFFD (3 bytes) on stdout and stderr alike. The SDK's bytes callbacks (sync and
    async) hand the bytes on as they came."""
    out_bytes, err_bytes = NOT_UTF8 * 3, NOT_UTF8[::-1]
    hostile.ws[f"/v1/sandboxes/{SID}/exec/stream"] = _binary_exec(out_bytes, err_bytes)
    code, out, err, _ = cli(hostile.url, "sandbox", "exec", SID, "--", "cat", "/bin/ls", home=tmp_path)
    assert code == 0, err[-300:]
    assert out == out_bytes, f"stdout: {len(out)} bytes, not the command's {len(out_bytes)}"
    assert err == err_bytes, f"stderr: {len(err)} bytes, not the command's {len(err_bytes)}"

    got: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}
    sbx = Sandbox.connect(SID, resume=False, url=hostile.url, api_key=API_KEY)
    try:
        sbx.commands.run("cat", on_stdout_bytes=got["out"].extend, on_stderr_bytes=got["err"].extend)
    finally:
        sbx.close()

    async def run_async() -> None:
        asbx = await AsyncSandbox.connect(SID, resume=False, url=hostile.url, api_key=API_KEY)
        try:
            await asbx.commands.run("cat", on_stdout_bytes=got["out"].extend)
        finally:
            await asbx.close()

    asyncio.run(run_async())
    assert bytes(got["out"]) == out_bytes * 2 and bytes(got["err"]) == err_bytes


def test_a_real_sandboxs_binary_output_reaches_the_file_whole(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """On the real platform: bytes a command in a real sandbox prints (random bytes, the bytes
    that are no UTF-8, a real binary) come out of `warren sandbox exec` the same, on stdout and
    on stderr."""
    sb = js(cli_env, "sandbox", "create", "--timeout", "300")
    assert isinstance(sb, dict)
    sid = str(sb["id"])
    over = {"XDG_CONFIG_HOME": cli_env["XDG_CONFIG_HOME"], "WARREN_URL": "", "WARREN_API_KEY": ""} | {
        "WARREN_ACCESS_TOKEN": ""
    }
    try:
        code, _, err = run(cli_env, "sandbox", "exec", sid, "head -c 65536 /dev/urandom > /tmp/r.bin")
        assert code == 0, err
        code, sums, err = run(cli_env, "sandbox", "exec", sid, "sha256sum /tmp/r.bin /bin/ls")
        assert code == 0, err
        want = [line.split()[0] for line in sums.splitlines()]

        def exec_bytes(*argv: str) -> tuple[bytes, bytes]:
            code, out, err, _ = cli("", "sandbox", "exec", sid, *argv, home=tmp_path, env_over=over)
            assert code == 0, err[-300:]
            return out, err

        out, _ = exec_bytes("--", "cat", "/tmp/r.bin")
        assert hashlib.sha256(out).hexdigest() == want[0], f"stdout: {len(out)} bytes, not /tmp/r.bin"
        _, err = exec_bytes("cat /tmp/r.bin >&2")
        assert hashlib.sha256(err).hexdigest() == want[0], f"stderr: {len(err)} bytes, not /tmp/r.bin"
        out, _ = exec_bytes("--", "cat", "/bin/ls")
        assert hashlib.sha256(out).hexdigest() == want[1], "`cat /bin/ls > out` is not /bin/ls"
        out, _ = exec_bytes("--", "printf", "\\377\\376\\000\\200")
        assert out == b"\xff\xfe\x00\x80"
    finally:
        run(cli_env, "sandbox", "kill", sid)
