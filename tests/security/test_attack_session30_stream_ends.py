"""Session 30: every stream whose agent call ended first left a task pending in the control plane.

A gRPC call with a request stream (ExecStream, PtyStream, the file transfers' credit streams)
has its request iterator read by a task of grpc.aio's own (``_consume_request_iterator``). When
the agent ends the call (a refused start, a process or terminal that exits) while that iterator
waits for something only an answer would release, grpc.aio leaves the task waiting: the CP's
``call.cancel()`` afterwards does nothing to an ended call. Each such call kept a task, its
generator and the call until the garbage collector destroyed them mid-``anext``, and each then
logged two ERROR lines (the CI logs' "Task was destroyed but it is pending!" and "aclose():
asynchronous generator is already running"). A tenant makes one per request at will: an E2B
``commands.run`` in a template without E2B's ``user`` account (the first try, as ``user``, is
refused), a start of a command that does not exist (exec stream, unary exec, envd's ``Start``),
a terminal whose shell exits.

Now the client interceptor ends a call's request stream with the call
(cp/hosts/agent_client.py, ``_CallRequests``): none is left pending, none is logged.

The CP runs on the test's loop, so its tasks are counted directly; the collector is held off
while the traffic runs so that the count does not race it, then run, and asyncio's log must be
clean. Before: 6 readers left by 6 ``commands.run``, 12 by 6 envd starts, 6 by 6 exec stream
starts, 6 by 6 unary execs, about half of the terminals (those whose exit reached the CP before
its own cancel). Streams the CP cancels itself (a client cut off mid-command, file reads) left
none before either; they are here so that the rule stays one for every stream.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
import websockets
from e2b import AsyncSandbox

from tests.harness.cp import InProcessCP
from tests.harness.environ import environ
from tests.harness.machine import free_port
from tests.harness.multihost import fleet
from tests.integration.e2b.envd_wire import Envd, envelope, envelopes
from warren.cp.app import state_of_app
from warren.cp.e2b import create_e2b_app

pytestmark = pytest.mark.root

AGENT_IP = "127.0.0.230"
ROUNDS = 6  # of each kind of stream
# A terminal whose shell exits: the CP's cancel comes before or after the agent's end (about
# half of them were left before); this many make a run with none left before ~1 in 60,000.
TERMINALS = 16
DRAIN_S = 30.0  # for the CP to finish streams whose clients have read their end (well under 1 s)
MISSING = "/no/such/command"


@dataclass
class Tenant:
    cp: InProcessCP
    key: str
    sandbox: str
    e2b_url: str

    def ws(self, route: str) -> str:
        return self.cp.url.replace("http", "ws", 1) + f"/v1/sandboxes/{self.sandbox}/{route}"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@pytest.fixture(scope="module")
async def tenant(cp: InProcessCP) -> AsyncIterator[Tenant]:
    """A sandbox of the ``minimal`` template (no ``user`` account) on a real agent, and the CP's
    E2B listener served beside its main port (the state is the main app's)."""
    admin = await cp.signup(admin=True)
    port = free_port()
    config = uvicorn.Config(
        create_e2b_app(state_of_app(cp.app)), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    e2b = uvicorn.Server(config)
    serving = asyncio.create_task(e2b.serve())
    try:
        async with fleet(cp, "stream-ends") as f:
            await f.add(admin, AGENT_IP)
            key = await admin.api_key()
            r = await cp.http.post("/v1/sandboxes", json={}, headers={"X-API-Key": key})
            assert r.status_code == 201, r.text
            while not e2b.started:
                assert not serving.done(), serving
                await asyncio.sleep(0.05)
            yield Tenant(cp, key, r.json()["id"], f"http://127.0.0.1:{port}")
    finally:
        e2b.should_exit = True
        await serving


class ErrorLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0])


@pytest.fixture
def asyncio_errors() -> Iterator[ErrorLines]:
    h = ErrorLines()
    logging.getLogger("asyncio").addHandler(h)
    try:
        yield h
    finally:
        logging.getLogger("asyncio").removeHandler(h)


def request_readers() -> list[asyncio.Task[object]]:
    """grpc.aio's tasks that read a call's request iterator, not yet ended."""
    return [t for t in asyncio.all_tasks() if "_consume_request_iterator" in repr(t.get_coro())]


async def e2b_runs(t: Tenant) -> None:
    """E2B's SDK, unchanged: ``commands.run`` as the default user (refused as ``user`` first)."""
    with environ({"E2B_API_URL": t.e2b_url, "E2B_SANDBOX_URL": t.e2b_url}, unset=["E2B_DOMAIN"]):
        sbx = await AsyncSandbox.connect(t.sandbox, api_key=t.key)
        for i in range(ROUNDS):
            assert (await sbx.commands.run(f"echo {i}")).stdout == f"{i}\n"


async def envd_missing_starts(t: Tenant) -> None:
    """envd's ``Start`` (Connect JSON) of a command that does not exist: refused (as ``user``,
    then as the template's user: two calls each)."""
    envd = Envd(t.e2b_url, t.sandbox)
    h = envd.headers() | {"Content-Type": "application/connect+json"}
    body = envelope({"process": {"cmd": MISSING}})
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(ROUNDS):
            r = await http.post(f"{t.e2b_url}/process.Process/Start", content=body, headers=h)
            flags, last = envelopes(r.content)[-1]
            assert r.status_code == 200 and flags & 2 and "error" in last, r.content


async def exec_stream_missing_starts(t: Tenant) -> None:
    for _ in range(ROUNDS):
        async with websockets.connect(t.ws("exec/stream"), additional_headers=t.headers) as ws:
            await ws.send(json.dumps({"type": "start", "cmd": MISSING}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), DRAIN_S))
            assert frame["type"] in ("error", "exit"), frame


async def unary_missing_execs(t: Tenant) -> None:
    for _ in range(ROUNDS):
        r = await t.cp.http.post(f"/v1/sandboxes/{t.sandbox}/exec", json={"cmd": MISSING}, headers=t.headers)
        assert r.status_code != 200 or r.json()["exit_code"] != 0, r.text


async def terminals_that_exit(t: Tenant) -> None:
    for _ in range(TERMINALS):
        async with websockets.connect(t.ws("pty"), additional_headers=t.headers) as ws:
            await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "cols": 80, "rows": 24}))
            await ws.send(b"exit 0\n")
            while not isinstance(frame := await asyncio.wait_for(ws.recv(), DRAIN_S), str) or (
                json.loads(frame)["type"] not in ("exit", "error")
            ):
                pass
            assert json.loads(frame)["type"] == "exit", frame


async def exec_streams_cut_off(t: Tenant) -> None:
    """Streams whose client vanishes mid-command (the CP cancels these calls itself)."""
    for _ in range(ROUNDS):
        ws = await websockets.connect(t.ws("exec/stream"), additional_headers=t.headers)
        await ws.send(json.dumps({"type": "start", "cmd": "cat"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), DRAIN_S))["type"] == "start"
        ws.transport.abort()


async def files_read(t: Tenant) -> None:
    for _ in range(ROUNDS):
        for route in ("files/read", "files/stream/read"):
            r = await t.cp.http.post(
                f"/v1/sandboxes/{t.sandbox}/{route}", json={"path": "/etc/hostname"}, headers=t.headers
            )
            assert r.status_code == 200, r.text


TRAFFIC = [
    e2b_runs,
    envd_missing_starts,
    exec_stream_missing_starts,
    unary_missing_execs,
    terminals_that_exit,
    exec_streams_cut_off,
    files_read,
]


async def readers_left(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """The request readers the traffic left: polled until none is (at most DRAIN_S)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_S
    while (left := [x for x in request_readers() if x not in before]) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    return left


@pytest.mark.parametrize("traffic", TRAFFIC, ids=lambda f: f.__name__)
async def test_no_task_outlives_its_stream(
    tenant: Tenant, asyncio_errors: ErrorLines, traffic: Callable[[Tenant], Awaitable[None]]
) -> None:
    before = set(request_readers())
    gc.collect()
    gc.disable()  # the collector would destroy the leftovers this counts (and log them)
    try:
        await traffic(tenant)
        left = await readers_left(before)
    finally:
        gc.enable()
    # Before: one reader per stream refused or ended by the agent, e.g. 6 for e2b_runs.
    assert not left, f"{len(left)} request readers left pending: {left[:2]}"
    gc.collect()
    for _ in range(10):  # the generators' finalizers (asyncio's aclose tasks) run
        await asyncio.sleep(0)
    assert not asyncio_errors.lines, asyncio_errors.lines
