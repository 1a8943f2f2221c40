"""The browser's own network namespace (tests/harness/browser_net.py): what an agent does to this
machine's network does not reach the browser's requests.

Chromium listens for link and address changes (a netlink socket) and fails the requests still
connecting with ``net::ERR_NETWORK_CHANGED``. A loopback connect is over in microseconds, so
under CI it took an agent's veth landing in that instant, under load (three runs, sessions
31 to 33). Here the connect is held open on purpose: the server's accept queue is full, so the
browser's SYNs go unanswered while an agent's veth appears. In this machine's namespace the
navigation fails at once with ``ERR_NETWORK_CHANGED``; in its own it is answered once the
server accepts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import uuid
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.harness.machine import free_port

from .conftest import Web

FILLERS = 3  # a backlog of 0 queues one connection; the rest wait in SYN retries


def _app() -> Starlette:
    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>answered</title><p>answered</p>")

    return Starlette(routes=[Route("/", page)])


@contextlib.contextmanager
def _full_accept_queue(port: int) -> Iterator[socket.socket]:
    """A listening socket on ``port`` whose accept queue is full: a new connect waits (its SYN
    dropped) until the queue drains."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(FILLERS)]
    for s in fillers:
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
    try:
        yield listener
    finally:
        for s in fillers:
            s.close()


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@contextlib.contextmanager
def _an_agents_veth() -> Iterator[None]:
    """What an agent does for each sandbox: a veth, its end here addressed and up."""
    link = f"wbn{uuid.uuid4().hex[:8]}"
    _ip("link", "add", link, "type", "veth", "peer", "name", link + "p")
    try:
        _ip("addr", "add", "10.254.254.1/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("link", "set", link + "p", "up")
        yield
    finally:
        _ip("link", "del", link)


async def test_a_navigation_still_connecting_outlives_an_agents_veth(web: Web) -> None:
    port = free_port()
    page = await web.new_page(record=False)
    with _full_accept_queue(port) as listener:
        web.net.expose(port)
        navigation = asyncio.create_task(page.goto(f"http://127.0.0.1:{port}/"))
        await asyncio.sleep(1)  # the browser is connecting
        with _an_agents_veth():
            await asyncio.sleep(2)  # Chromium heard of it within a second (unisolated: 0.2 s)
    server = uvicorn.Server(uvicorn.Config(_app(), log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        resp = await asyncio.wait_for(navigation, 60)
        assert resp is not None and resp.status == 200
        assert "answered" in await resp.text()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listener.close()
