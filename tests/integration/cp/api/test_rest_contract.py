"""The exec, file, snapshot and metrics REST contract against a real control plane and
scripted agents (real gRPC servers over the same mTLS as ``warren agent``). These pin what the
CP sends and how it answers in cases a real agent only produces by accident: an agent stream
that breaks midway, a broadcast where one host fails, exact check ordering. The live-agent
suites (test_sdk_*.py, test_snapshots.py) cover the same routes end to end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import websockets.asyncio.client as wsc
from websockets.exceptions import InvalidStatus

from tests.harness.cp import InProcessCP, User, sql
from tests.harness.fake_agent import serve_fake_agent
from warren import AsyncSandbox, ids
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc
from warren.sdk import StreamError

pytestmark = pytest.mark.timeout(120)


@dataclass
class FakeAgent(pb_grpc.HostAgentServicer):
    """Just enough agent: an in-memory filesystem, `cat`-like exec streams, snapshots."""

    files: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: dict[str, grpc.StatusCode] = field(default_factory=dict)
    break_read_after: int | None = None  # chunks sent before ReadFileStream fails
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # calls that wait to be let go
    exports: int = 0
    lie: bool = False  # ExportSnapshot's meta does not match its bytes

    async def _maybe_fail(self, name: str, request: Any, context: Any) -> None:
        self.calls.append((name, request))
        if name in self.fail:
            await context.abort(self.fail[name], f"{name} failed on purpose")

    async def CreateSandbox(self, request: Any, context: Any) -> Any:
        await self._maybe_fail("CreateSandbox", request, context)
        return pb.CreateSandboxResponse(sandbox_id=request.sandbox_id, status="running", host_ip="10.0.0.2")

    async def DestroySandbox(self, request: Any, context: Any) -> Any:
        return pb.DestroySandboxResponse()

    async def PauseSandbox(self, request: Any, context: Any) -> Any:
        return pb.PauseSandboxResponse()

    async def ResumeSandbox(self, request: Any, context: Any) -> Any:
        self.calls.append(("ResumeSandbox", request))
        return pb.ResumeSandboxResponse(sandbox_id=request.sandbox_id, status="running", host_ip="10.0.0.2")

    async def ExecStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        first = await request_iterator.__anext__()
        await self._maybe_fail("ExecStream", first.start, context)
        yield pb.ExecEvent(start=pb.ExecEvent.Start(pid=42))
        if first.start.cmd in ("x", "binary"):  # what the unary exec route runs (it collects a stream)
            async for ev in self._unary(first.start.cmd, request_iterator):
                yield ev
            return
        # Split a multi-byte character across two events: the client must still get text.
        yield pb.ExecEvent(stdout="€".encode()[:1])
        yield pb.ExecEvent(stdout="€".encode()[1:])
        async for msg in request_iterator:
            kind = msg.WhichOneof("msg")
            if kind == "stdin":
                yield pb.ExecEvent(stdout=msg.stdin)
            elif kind == "signal":
                yield pb.ExecEvent(
                    exit=pb.ExecEvent.Exit(exit_code=-msg.signal, error=f"killed by signal {msg.signal}")
                )
                return
            elif kind == "close_stdin":
                yield pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=0))
                return

    @staticmethod
    async def _unary(cmd: str, request_iterator: Any) -> AsyncIterator[Any]:
        stdin = bytearray()
        async for msg in request_iterator:
            if msg.WhichOneof("msg") == "stdin":
                stdin += msg.stdin
            elif msg.WhichOneof("msg") == "close_stdin":
                break
        if cmd == "binary":
            yield pb.ExecEvent(stdout=b"\xff")
            yield pb.ExecEvent(stderr=b"fine")
            yield pb.ExecEvent(stdout=b"\xfe")
            yield pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=0))
            return
        yield pb.ExecEvent(stdout=bytes(stdin) or b"out")
        yield pb.ExecEvent(stderr=b"err")
        yield pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=3))

    async def WriteFileStream(self, request_iterator: Any, context: Any) -> Any:
        meta = None
        data = bytearray()
        committed = False
        async for msg in request_iterator:
            if msg.WhichOneof("msg") == "meta":
                meta = msg.meta
            elif msg.WhichOneof("msg") == "commit":
                committed = True
            else:
                assert len(msg.chunk) <= 64 * 1024
                data += msg.chunk
        assert meta is not None
        self.calls.append(("WriteFileStream", meta.path))
        # Like the real agent: a client's cancel may end the request stream before it is seen,
        # so only the commit proves the upload whole.
        if meta.explicit_commit and not committed:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload was cancelled")
        self.files[meta.path] = bytes(data)
        return pb.WriteFileResponse(bytes_written=len(data))

    async def ReadFileStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.path not in self.files:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no such file: {request.path}")
        data = self.files[request.path]
        for n, i in enumerate(range(0, len(data), 65536)):
            if self.break_read_after is not None and n >= self.break_read_after:
                await context.abort(grpc.StatusCode.INTERNAL, "the sandbox went away")
            yield pb.ReadFileStreamResponse(chunk=data[i : i + 65536])

    async def Stat(self, request: Any, context: Any) -> Any:
        if request.path not in self.files:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no such file: {request.path}")
        name = request.path.rsplit("/", 1)[-1]
        return pb.StatResponse(entry=pb.EntryInfo(name=name, type="file", path=request.path,
                                                  size=len(self.files[request.path])))  # fmt: skip

    async def ExportSnapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """A layer of made-up bytes (the CP stores whatever hashes right), then its meta;
        ``lie`` makes the meta name other bytes."""
        await self._maybe_fail("ExportSnapshot", request, context)
        if "ExportSnapshot" in self.hold:
            await self.hold["ExportSnapshot"].wait()
        self.exports += 1
        data = f"layer of {request.sandbox_id} #{self.exports}".encode().ljust(1234, b"\0")
        digest = hashlib.sha256(b"other bytes" if self.lie else data).hexdigest()
        yield pb.LayerChunk(chunk=data[:1000])
        yield pb.LayerChunk(chunk=data[1000:])
        yield pb.LayerChunk(done=pb.LayerMeta(digest=digest, size=len(data)))

    async def DeleteSnapshot(self, request: Any, context: Any) -> Any:
        await self._maybe_fail("DeleteSnapshot", request, context)
        return pb.DeleteSnapshotResponse()

    async def GetSandboxMetrics(self, request: Any, context: Any) -> Any:
        self.calls.append(("GetSandboxMetrics", request.range))
        import time

        now = int(time.time())
        return pb.GetSandboxMetricsResponse(points=[
            pb.MetricPoint(timestamp_unix=now - 7200, cpu_pct=1, mem_bytes=1, disk_bytes=1),
            pb.MetricPoint(timestamp_unix=now - 10, cpu_pct=2.5, mem_bytes=100, disk_bytes=10),
        ])  # fmt: skip


@dataclass
class Env:
    cp: InProcessCP
    user: User
    key: str
    a: FakeAgent
    b: FakeAgent

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-API-Key": self.key, **kw.pop("headers", {})}
        return await self.cp.http.request(method, path, headers=headers, **kw)

    async def sandbox(self) -> str:
        r = await self.api("POST", "/v1/sandboxes", json={"vcpus": 2, "memory_mb": 768})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
async def env(cp: InProcessCP, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    admin = await cp.signup(admin=True)
    agents, servers = [], []
    for _ in range(2):
        _, token = await admin.create_host()
        agent = FakeAgent()
        server, address = await serve_fake_agent(agent, cp.url, token, Path(tmp_path_factory.mktemp("fake")))
        # The fake agent runs nothing, and this module makes many sandboxes without destroying
        # them all: a host as big as a rack keeps capacity scheduling (tests/security/
        # test_quotas.py) out of the way of the REST contract.
        await sql(cp, "UPDATE hosts SET status = 'online', cpu_cores = 4096, memory_mb = 16777216 "
                      "WHERE address = :a", a=address)  # fmt: skip
        agents.append(agent)
        servers.append(server)
    # Sandboxes land on agent A: B stays online but empty (it only matters for broadcasts).
    await sql(cp, "UPDATE hosts SET status = 'offline' WHERE address <> :a",
              a=(await sql(cp, "SELECT address FROM hosts ORDER BY created_at LIMIT 1"))[0][0])  # fmt: skip
    try:
        yield Env(cp, admin, await admin.api_key(), agents[0], agents[1])
    finally:
        for s in servers:
            await s.stop(0)


async def _all_online(env: Env) -> None:
    await sql(env.cp, "UPDATE hosts SET status = 'online'")


# --------------------------------------------------------------------------------------- exec


async def test_exec_check_order_and_encoding(env: Env) -> None:
    sid = await env.sandbox()
    # 1. bad id, 2. unknown sandbox, 3. not running, 4. body.
    assert (await env.api("POST", "/v1/sandboxes/nope/exec", json={})).status_code == 400
    r = await env.api("POST", f"/v1/sandboxes/sb-{'0' * 25}/exec", content=b"{not json")
    assert r.status_code == 404  # the sandbox is judged before the body
    r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", json={})
    assert r.status_code == 400 and r.json()["error"]["message"] == "cmd is required"
    r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", content=b"{not json")
    assert r.status_code == 400

    r = await env.api("POST", f"/v1/sandboxes/{sid}/exec",
                      json={"cmd": "x", "args": ["a"], "env": {"A": "1"}, "cwd": "/tmp", "timeout_sec": 5,
                            "stdin": "fed"})  # fmt: skip
    body = r.json()
    assert r.status_code == 200, body
    assert (body["stdout"], body["stderr"], body["exit_code"], body["encoding"]) == ("fed", "err", 3, "utf-8")
    assert body["sandbox_id"] == sid and body["cmd"] == "x" and body["duration_ms"] >= 0
    req = [c for n, c in env.a.calls if n == "ExecStream"][-1]
    assert (list(req.args), dict(req.env), req.cwd, req.timeout_sec) == (["a"], {"A": "1"}, "/tmp", 5)

    r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", json={"cmd": "binary"})
    body = r.json()
    assert body["encoding"] == "base64"
    assert base64.b64decode(body["stdout"]) == b"\xff\xfe" and base64.b64decode(body["stderr"]) == b"fine"

    env.a.fail["ExecStream"] = grpc.StatusCode.INTERNAL
    try:
        r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", json={"cmd": "x"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "agent_error"
    finally:
        env.a.fail.clear()

    # Host row without an address → 503, but only once id, status and body passed.
    await sql(env.cp, "UPDATE hosts SET address = '' WHERE status = 'online'")
    try:
        r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", json={})
        assert r.status_code == 400
        r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", json={"cmd": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable"
    finally:
        await _restore_addresses(env)

    r = await env.api("POST", f"/v1/sandboxes/{sid}/pause")
    assert r.status_code == 200
    r = await env.api("POST", f"/v1/sandboxes/{sid}/exec", json={"cmd": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"


_ADDRESSES: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
async def _remember_addresses(env: Env) -> None:
    for hid, addr in await sql(env.cp, "SELECT id, address FROM hosts"):
        _ADDRESSES[str(hid)] = addr


async def _restore_addresses(env: Env) -> None:
    for hid, addr in _ADDRESSES.items():
        await sql(env.cp, "UPDATE hosts SET address = :a WHERE id = CAST(:i AS uuid)", a=addr, i=hid)


async def test_stream_auth_by_query_param_stdin_echo_and_utf8_split(env: Env) -> None:
    sid = await env.sandbox()
    ws_url = env.cp.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/exec/stream"
    # Before the upgrade, errors are JSON answers.
    with pytest.raises(InvalidStatus) as e:
        await wsc.connect(ws_url)
    assert e.value.response.status_code == 401
    assert json.loads(e.value.response.body)["error"]["code"] == "unauthorized"
    with pytest.raises(InvalidStatus) as e:
        await wsc.connect(ws_url.replace(sid, "sb-" + "0" * 25) + f"?api_key={env.key}")
    assert e.value.response.status_code == 404

    async with wsc.connect(f"{ws_url}?token={env.user.token}") as ws:  # the JWT as a query param
        await ws.send(
            json.dumps({"type": "start", "cmd": "cat", "args": ["-"], "env": {"X": "y"}, "background": True})
        )
        assert json.loads(await ws.recv()) == {"type": "start", "pid": 42}
        assert json.loads(await ws.recv()) == {"type": "stdout", "data": "€"}
        await ws.send(json.dumps({"type": "stdin", "data": "hello"}))
        assert json.loads(await ws.recv()) == {"type": "stdout", "data": "hello"}
        await ws.send(json.dumps({"type": "stdin", "data_b64": base64.b64encode(b"\xff").decode()}))
        assert json.loads(await ws.recv()) == {"type": "stdout", "data_b64": "/w=="}
        await ws.send(json.dumps({"type": "bogus"}))
        bad = json.loads(await ws.recv())
        assert bad["type"] == "error" and bad["code"] == "invalid_request" and bad["fatal"] is False
        await ws.send(json.dumps({"type": "signal", "signal": "SIGTERM"}))
        assert json.loads(await ws.recv()) == {
            "type": "exit",
            "exit_code": -15,
            "error": "killed by signal 15",
        }
    start = [c for n, c in env.a.calls if n == "ExecStream"][-1]
    assert (start.cmd, list(start.args), dict(start.env), start.background) == (
        "cat",
        ["-"],
        {"X": "y"},
        True,
    )

    async with wsc.connect(ws_url, additional_headers={"X-API-Key": env.key}) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        msg = json.loads(await ws.recv())
        assert msg == {"type": "error", "data": "first message must be type 'start' with a 'cmd' field",
                       "code": "invalid_request", "status": 400}  # fmt: skip


async def test_sdk_over_the_stream(env: Env) -> None:
    sid = await env.sandbox()
    sbx = await AsyncSandbox.connect(sid, url=env.cp.url, api_key=env.key)
    try:
        h = await sbx.commands.run("cat", background=True, stdin=True)
        await h.send_stdin("abc")
        await h.close_stdin()
        r = await h.wait()
        assert r.stdout == "€abc" and r.exit_code == 0
    finally:
        await sbx.close()


# -------------------------------------------------------------------------------------- files


def _multipart(*parts: tuple[str, bytes, bool]) -> tuple[bytes, str]:
    b = "bNdRy"
    out = b""
    for name, value, is_file in parts:
        fn = '; filename="f"' if is_file else ""
        out += (
            f'--{b}\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode() + value + b"\r\n"
        )
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


async def test_uploads_order_caps_and_chunking(env: Env) -> None:
    sid = await env.sandbox()
    base = f"/v1/sandboxes/{sid}/files"
    body, ctype = _multipart(("file", b"x", True), ("path", b"/a", False))
    r = await env.api("POST", f"{base}/stream/write", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and "before" in r.json()["error"]["message"]
    # The unary route takes any order.
    r = await env.api("POST", f"{base}/write", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 204 and env.a.files["/a"] == b"x"
    r = await env.api("POST", f"{base}/write", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body, ctype = _multipart(("path", b"/nofile", False))
    r = await env.api("POST", f"{base}/stream/write", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and r.json()["error"]["message"] == "file is required"

    big = bytes(range(256)) * 2000  # 512000 bytes: 8 chunks of <= 64 KiB to the agent
    body, ctype = _multipart(("path", b"/big", False), ("file", big, True))
    r = await env.api("POST", f"{base}/stream/write", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 204 and env.a.files["/big"] == big

    # A stream upload cut short never becomes a (short) file.
    async def truncated() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]

    r = await env.api("POST", f"{base}/stream/write", content=truncated(), headers={"Content-Type": ctype})
    assert r.status_code == 400

    # The unary cap (100 MiB) answers 413 while reading, before anything reaches the agent.
    async def huge() -> AsyncIterator[bytes]:
        yield _multipart(("path", b"/huge", False))[0].rsplit(b"--bNdRy--", 1)[0]
        yield b'--bNdRy\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        chunk = b"\0" * (1 << 20)
        for _ in range(101):
            yield chunk

    r = await env.api("POST", f"{base}/write", content=huge(), headers={"Content-Type": ctype})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert "/huge" not in env.a.files


async def test_downloads_404_first_and_midway_failure_is_visible(env: Env) -> None:
    sid = await env.sandbox()
    base = f"/v1/sandboxes/{sid}/files"
    for route in ("read", "stream/read"):
        r = await env.api("POST", f"{base}/{route}", json={"path": "/missing"})
        assert r.status_code == 404, route
    env.a.files["/f"] = b"z" * (10 * 65536)
    r = await env.api("POST", f"{base}/read", json={"path": "/f"})
    assert r.status_code == 200 and r.content == env.a.files["/f"]
    # Chunked: a size from stat is not what is read (symlinks, /proc, growing files: D13).
    assert "content-length" not in r.headers

    env.a.break_read_after = 3
    try:
        async with env.cp.http.stream("POST", f"{base}/stream/read", json={"path": "/f"},
                                      headers={"X-API-Key": env.key}) as resp:  # fmt: skip
            assert resp.status_code == 200
            with pytest.raises(httpx.HTTPError):  # the chunked body is cut off, not ended
                async for _ in resp.aiter_raw():
                    pass
        sbx = await AsyncSandbox.connect(sid, url=env.cp.url, api_key=env.key)
        try:
            with pytest.raises(StreamError):
                async for _ in await sbx.files.read_stream("/f"):
                    pass
        finally:
            await sbx.close()
    finally:
        env.a.break_read_after = None


# ---------------------------------------------------------------------------------- snapshots


async def test_snapshot_rules_overwrite_and_delete(env: Env) -> None:
    sid = await env.sandbox()
    r = await env.api("POST", "/v1/snapshots", json={"sandbox_id": sid, "name": "minimal"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved"
    r = await env.api("POST", "/v1/snapshots", json={"sandbox_id": sid, "name": "-bad"})
    assert r.status_code == 400
    r = await env.api("POST", "/v1/snapshots", json={"name": "x"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "sandbox_id is required"

    r = await env.api("POST", "/v1/snapshots", json={"sandbox_id": sid, "name": "s1"})
    assert r.status_code == 201, r.text
    t = r.json()
    assert (t["name"], t["type"], t["kind"], t["vcpus"], t["memory_mb"], t["size_bytes"], t["platform"]) == (
        "s1", "snapshot", "filesystem", 2, 768, 1234, False,
    )  # fmt: skip
    # The snapshot is the exported layer on the sandbox's chain (minimal: no layers), in the store.
    ((old, layers, base, source),) = await sql(
        env.cp, "SELECT id, layers, base, source FROM templates WHERE name = 's1'"
    )
    assert (len(layers), base, source) == (1, "minimal", "snapshot")
    assert await env.cp.app.state.store.exists(layers[0])
    assert (await env.api("GET", f"/v1/sandboxes/{sid}")).json()["status"] == "paused"
    r = await env.api("POST", "/v1/snapshots", json={"sandbox_id": sid, "name": "s1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exists"
    names = [t["name"] for t in (await env.api("GET", "/v1/snapshots?type=snapshot")).json()]
    assert names == ["s1"]
    assert "minimal" in [t["name"] for t in (await env.api("GET", "/v1/snapshots")).json()]
    assert (await env.api("GET", "/v1/snapshots?type=weird")).status_code == 400

    # Failed export of a running sandbox: reverted to running, the old snapshot untouched.
    sid2 = await env.sandbox()
    env.a.fail["ExportSnapshot"] = grpc.StatusCode.INTERNAL
    try:
        r = await env.api("POST", "/v1/snapshots?overwrite=true", json={"sandbox_id": sid2, "name": "s1"})
        assert r.status_code == 502
    finally:
        env.a.fail.clear()
    # The agent pauses before it exports: a failed snapshot resumes it there, then says running.
    assert ("ResumeSandbox", sid2) in [
        (n, getattr(c, "sandbox_id", None)) for n, c in env.a.calls + env.b.calls
    ]
    assert (await env.api("GET", f"/v1/sandboxes/{sid2}")).json()["status"] == "running"
    # An agent whose digest does not match its bytes: refused, nothing recorded either.
    env.a.lie = True
    try:
        r = await env.api("POST", "/v1/snapshots?overwrite=true", json={"sandbox_id": sid2, "name": "s1"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "snapshot_mismatch", r.text
    finally:
        env.a.lie = False
    assert (await env.api("GET", f"/v1/sandboxes/{sid2}")).json()["status"] == "running"
    assert [r[0] for r in await sql(env.cp, "SELECT id FROM templates WHERE name = 's1'")] == [old]

    # Overwrite swaps the rows; store snapshots have no files on hosts, so no host is asked
    # to delete anything, whatever it would answer.
    await _all_online(env)
    env.a.fail["DeleteSnapshot"] = env.b.fail["DeleteSnapshot"] = grpc.StatusCode.INTERNAL
    try:
        r = await env.api("POST", "/v1/snapshots?overwrite=true", json={"sandbox_id": sid2, "name": "s1"})
        assert r.status_code == 201, r.text
        ((new, new_layers),) = await sql(env.cp, "SELECT id, layers FROM templates WHERE name = 's1'")
        assert new != old and new_layers != layers
        assert (await env.api("DELETE", "/v1/snapshots/s1")).status_code == 204
        assert not await sql(env.cp, "SELECT 1 FROM templates WHERE name = 's1'")
    finally:
        env.a.fail.clear()
        env.b.fail.clear()
    assert [n for a in (env.a, env.b) for n, _ in a.calls if n == "DeleteSnapshot"] == []
    assert (await env.api("DELETE", "/v1/snapshots/s1")).status_code == 404
    assert (await env.api("DELETE", "/v1/snapshots/minimal")).status_code == 403


async def _legacy_snapshot(env: Env, name: str, host: Any) -> Any:
    """A snapshot row as the CP wrote it before the template store: files on ``host`` only."""
    tid = uuid.uuid4()
    team = ids.parse_id(ids.Kind.TEAM, env.user.team_id)
    await sql(env.cp, "INSERT INTO templates (id, name, type, team_id, host_id, size_bytes) "
                      "VALUES (:i, :n, 'snapshot', :t, :h, 10)", i=tid, n=name, t=team, h=host)  # fmt: skip
    return tid


async def test_a_legacy_snapshot_is_deleted_on_the_host_with_its_files(env: Env) -> None:
    """Snapshots taken before the template store keep their rules: only their host is asked to
    delete the files; its failure keeps the record (files first, then the row)."""
    await _all_online(env)
    ((a_host,), _b) = await sql(env.cp, "SELECT id FROM hosts ORDER BY created_at")
    tid = await _legacy_snapshot(env, "old-style", a_host)

    def deletes(agent: Any) -> list[str]:
        return [c.template_id for n, c in agent.calls if n == "DeleteSnapshot"]

    env.a.fail["DeleteSnapshot"] = grpc.StatusCode.INTERNAL
    env.b.fail["DeleteSnapshot"] = grpc.StatusCode.INTERNAL
    try:
        r = await env.api("DELETE", "/v1/snapshots/old-style")
        assert r.status_code == 500 and r.json()["error"]["code"] == "agent_error"
        assert await sql(env.cp, "SELECT 1 FROM templates WHERE name = 'old-style'")
        env.a.fail["DeleteSnapshot"] = grpc.StatusCode.NOT_FOUND  # nothing there: fine
        assert (await env.api("DELETE", "/v1/snapshots/old-style")).status_code == 204
    finally:
        env.a.fail.clear()
        env.b.fail.clear()
    assert str(tid) in deletes(env.a) and str(tid) not in deletes(env.b)
    assert not await sql(env.cp, "SELECT 1 FROM templates WHERE name = 'old-style'")


async def test_a_snapshot_finishing_after_its_team_was_deleted_is_not_recorded(env: Env) -> None:
    """Its record would outlive the team's template cleanup: it is refused (403 no_team); its
    layer stays in the store unreferenced, for garbage collection."""
    user = await env.cp.signup()
    key = await user.api_key()
    headers = {"X-API-Key": key}
    r = await env.cp.http.post("/v1/sandboxes", json={}, headers=headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    release = asyncio.Event()
    for agent in (env.a, env.b):
        agent.hold["ExportSnapshot"] = release
    try:
        snapping = asyncio.create_task(
            env.cp.http.post("/v1/snapshots", json={"sandbox_id": sid, "name": "late"}, headers=headers)
        )
        for _ in range(100):  # until the agent has the request
            calls = [c for a in (env.a, env.b) for n, c in a.calls if n == "ExportSnapshot"]
            if any(c.sandbox_id == sid for c in calls):
                break
            await asyncio.sleep(0.02)
        assert (await user.req("DELETE", f"/v1/teams/{user.team_id}")).status_code == 204
        release.set()
        r = await snapping
    finally:
        for agent in (env.a, env.b):
            agent.hold.clear()
    assert r.status_code == 403 and r.json()["error"]["code"] == "no_team", r.text
    team = ids.parse_id(ids.Kind.TEAM, user.team_id)
    assert not await sql(env.cp, "SELECT 1 FROM templates WHERE team_id = :t", t=team)


async def test_deleting_a_legacy_snapshot_whose_host_is_not_online_skips_its_files(env: Env) -> None:
    """SPEC asks online hosts only: a snapshot on a host that is down can still be deleted (its
    files stay on that host)."""
    await _all_online(env)
    ((host,),) = await sql(env.cp, "SELECT id FROM hosts ORDER BY created_at LIMIT 1")
    tid = await _legacy_snapshot(env, "on-a-down-host", host)
    await sql(env.cp, "UPDATE hosts SET status = 'unreachable' WHERE id = :h", h=host)
    try:
        assert (await env.api("DELETE", "/v1/snapshots/on-a-down-host")).status_code == 204
    finally:
        await sql(env.cp, "UPDATE hosts SET status = 'online' WHERE id = :h", h=host)
    asked = [c.template_id for a in (env.a, env.b) for n, c in a.calls if n == "DeleteSnapshot"]
    assert str(tid) not in asked


async def test_metrics_ranges_and_states(env: Env) -> None:
    sid = await env.sandbox()
    r = await env.api("GET", f"/v1/sandboxes/{sid}/metrics?range=5m")
    assert r.status_code == 200
    body = r.json()
    assert body["range"] == "5m" and len(body["points"]) == 1  # the 2-hour-old point is trimmed
    assert body["points"][0]["cpu_pct"] == 2.5 and body["points"][0]["timestamp"].endswith("Z")
    # (both hosts are online by now: the sandbox may be on either)
    assert ("GetSandboxMetrics", "10m") in env.a.calls + env.b.calls
    await env.api("GET", f"/v1/sandboxes/{sid}/metrics?range=6h")
    assert ("GetSandboxMetrics", "24h") in env.a.calls + env.b.calls
    assert (await env.api("GET", f"/v1/sandboxes/{sid}/metrics?range=7m")).status_code == 400
    assert (await env.api("DELETE", f"/v1/sandboxes/{sid}")).status_code == 204
    assert (await env.api("GET", f"/v1/sandboxes/{sid}/metrics")).status_code == 404
