"""The body cap and the body budget (cp/body_cap.py), driven through its ASGI interface: each
request is a queue of receive messages and a list of what the middleware sent back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from warren.config import Settings
from warren.cp.body_cap import BodyBudget, BodyCapMiddleware, MiB


class App:
    """The app behind the middleware: reads the body, then waits for ``release`` (so a test can
    look at the budget while a request is in the app), then answers 200 with the body's size."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.bodies: list[bytes] = []
        self.fail = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.bodies.append(body)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the app failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


class Request:
    """One request on its own connection: ``feed`` body chunks, ``gone`` the client."""

    def __init__(self, mw: BodyCapMiddleware, path: str, headers: dict[str, str], peer: str) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": (peer, 40000),
        }

        async def send(m: Message) -> None:
            self.sent.append(m)

        self.task = asyncio.create_task(mw(scope, self.inbox.get, send))

    def feed(self, chunk: bytes, *, more: bool = True) -> None:
        self.inbox.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    def gone(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    async def answer(self) -> tuple[int, dict[str, str], Any]:
        await asyncio.wait_for(self.task, 30)
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return start["status"], headers, json.loads(body)


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "max_json_body": MiB,
        "max_upload_bytes": 4 * MiB,
        "body_budget_mb": 4,
        "body_budget_per_address_mb": 2,
        "body_read_timeout_s": 30.0,
    }
    return Settings(**{**base, **kw})


def make(**kw: Any) -> tuple[BodyCapMiddleware, App]:
    app = App()
    return BodyCapMiddleware(app, settings=settings(**kw)), app


def post(mw: BodyCapMiddleware, n: int | None, peer: str = "10.0.0.1", **headers: str) -> Request:
    h = {"content-type": "application/json", **headers}
    if n is not None:
        h["content-length"] = str(n)
    return Request(mw, "/v1/sandboxes", h, peer)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_budget_bounds_the_total_and_each_address() -> None:
    b = BodyBudget(total=10, per_address=4)
    assert b.take("a", 4) and not b.take("a", 1)
    assert b.take("b", 4) and not b.take("c", 3) and b.take("c", 2)
    b.give_back("a", 4)
    assert b.take("c", 2) and b.used == 8 and "a" not in b.by_address
    for addr, n in (("b", 4), ("c", 4)):
        b.give_back(addr, n)
    assert b.used == 0 and b.by_address == {}
    # A body over a bound fits when it is alone under it, never beside another.
    assert b.take("a", 6) and not b.take("a", 1) and b.take("b", 4) and not b.take("c", 1)
    b.give_back("a", 6)
    b.give_back("b", 4)
    assert b.take("a", 11) and not b.take("b", 1)


async def test_a_declared_length_is_charged_before_a_byte_is_read() -> None:
    mw, app = make()
    held = [post(mw, MiB) for _ in range(2)]  # the address's 2 MiB, nothing sent yet
    await settle()
    assert mw.budget.by_address == {"10.0.0.1": 2 * MiB}
    status, headers, body = await post(mw, 10).answer()
    assert status == 503 and body["error"]["code"] == "server_busy"
    assert int(headers["retry-after"]) >= 1 and headers["connection"] == "close"
    # Another address still gets in while this one holds its share.
    other = post(mw, 2, peer="10.0.0.2")
    other.feed(b"{}", more=False)
    assert (await other.answer())[0] == 200
    # The stalled clients go away: the budget comes back whole.
    for r in held:
        r.feed(b" " * 1000)
        r.gone()
        await asyncio.wait_for(r.task, 30)
    assert mw.budget.used == 0 and mw.budget.by_address == {}
    assert app.bodies == [b"{}"]


async def test_the_total_budget_bounds_every_address_together() -> None:
    mw, _ = make(body_budget_mb=3)
    held = [post(mw, MiB, peer=f"10.0.1.{i}") for i in range(3)]
    await settle()
    status, _, body = await post(mw, 1, peer="10.0.2.1").answer()
    assert status == 503 and body["error"]["code"] == "server_busy"
    for r in held:
        r.gone()
    await asyncio.gather(*(r.task for r in held))
    assert mw.budget.used == 0


async def test_a_chunked_body_is_charged_as_it_arrives() -> None:
    mw, _ = make()
    first = post(mw, None)
    first.feed(b" " * (MiB - 1))
    second = post(mw, None)
    second.feed(b" " * (MiB - 1))
    await settle()
    assert mw.budget.used == 2 * MiB - 2
    third = post(mw, None)
    third.feed(b" " * 10)  # past the address's share
    status, headers, _ = await third.answer()
    assert status == 503 and "retry-after" in headers
    for r in (first, second):
        r.feed(b"", more=False)
        assert (await r.answer())[0] == 200
    assert mw.budget.used == 0


async def test_the_charge_is_held_while_the_app_runs_and_returned_however_it_ends() -> None:
    mw, app = make()
    app.release.clear()
    r = post(mw, 2)
    r.feed(b"{}", more=False)
    await settle()
    assert mw.budget.used == 2
    app.fail = True
    app.release.set()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(r.task, 30)
    assert mw.budget.used == 0


async def test_bodies_over_the_cap_are_413_and_hold_nothing() -> None:
    mw, _ = make()
    status, _, body = await post(mw, MiB + 1).answer()
    assert status == 413 and body["error"]["code"] == "too_large"
    r = post(mw, None)
    r.feed(b" " * MiB)
    r.feed(b" ")
    status, _, _ = await r.answer()
    assert status == 413 and mw.budget.used == 0


async def test_a_body_not_whole_by_the_deadline_is_408() -> None:
    mw, _ = make(body_read_timeout_s=0.2)
    r = post(mw, 100)
    r.feed(b" " * 99)  # and the last byte never comes
    status, headers, body = await r.answer()
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close" and mw.budget.used == 0


async def test_uploads_to_streaming_routes_are_not_charged_elsewhere_they_are_json() -> None:
    mw, app = make()
    app.release.clear()
    octets = {"content-type": "application/octet-stream"}
    up = Request(
        mw, "/v1/sandboxes/x/files/signed/upload", {**octets, "content-length": str(3 * MiB)}, "1.2.3.4"
    )
    up.feed(b"x" * 3 * MiB, more=False)
    await settle()
    assert app.bodies == [b"x" * 3 * MiB] and mw.budget.used == 0
    app.release.set()
    assert (await up.answer())[0] == 200
    # The same content type on a route that buffers its body buys no bigger cap.
    status, _, _ = await Request(
        mw, "/v1/sandboxes", {**octets, "content-length": str(2 * MiB)}, "1.2.3.4"
    ).answer()
    assert status == 413


async def test_the_address_is_the_apps_client_address() -> None:
    mw, _ = make(trusted_proxies="10.9.0.0/16")
    held = post(mw, MiB, peer="10.9.0.1", **{"x-forwarded-for": "203.0.113.7"})
    await settle()
    assert set(mw.budget.by_address) == {"203.0.113.7"}
    v6 = post(mw, 5, peer="2001:db8::1")
    await settle()
    assert "2001:db8::/64" in mw.budget.by_address  # an IPv6 client counts as its /64
    for r in (held, v6):
        r.gone()
        await asyncio.wait_for(r.task, 30)
    assert mw.budget.by_address == {}


def upload(mw: BodyCapMiddleware, n: int | None, path: str = "/v1/templates/import") -> Request:
    h = {"content-type": "multipart/form-data; boundary=x"}
    if n is not None:
        h["content-length"] = str(n)
    return Request(mw, path, h, "10.0.0.1")


async def test_a_streamed_upload_is_charged_a_window_not_its_size() -> None:
    mw, app = make(max_upload_bytes=MiB)
    big = upload(mw, 64 * MiB)  # past every cap here: the route streams it under its own
    await settle()
    assert mw.budget.by_address == {"10.0.0.1": MiB}  # one JSON body's worth, while it is read
    json_body = post(mw, MiB)  # the address's other MiB (2 in all here)
    status, _, body = await post(mw, 10).answer()  # and no more
    assert status == 503 and body["error"]["code"] == "server_busy"
    json_body.gone()
    for _ in range(8):
        big.feed(b"x" * (8 * MiB))
    big.feed(b"", more=False)
    await settle()
    assert mw.budget.used == 0  # given back with the last byte, before the app answers
    assert (await big.answer())[0] == 200 and len(app.bodies[-1]) == 64 * MiB


async def test_a_stalled_streamed_upload_is_408_whatever_the_route_made_of_it() -> None:
    class Swallowing(App):  # a route that turns every failure into its own 500
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await super().__call__(scope, receive, send)
            except Exception:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})

    mw = BodyCapMiddleware(Swallowing(), settings=settings(body_read_timeout_s=0.2))
    stalled = upload(mw, 10 * MiB)
    stalled.feed(b"x" * 1024)  # then nothing: 0.2 s + 1 KiB / 16 KiB/s of waiting, then 408
    status, headers, body = await stalled.answer()
    assert status == 408 and body["error"]["code"] == "request_timeout" and headers["connection"] == "close"
    assert mw.budget.used == 0


async def test_a_trickled_upload_cannot_stretch_its_pace() -> None:
    mw, _ = make(body_read_timeout_s=0.2, body_min_upload_rate_kib_s=1)
    r = upload(mw, 10 * MiB)

    async def trickle() -> None:
        while not r.task.done():
            r.feed(b"x")  # 1 byte per 50 ms: 1/1024 s more allowance per 50 ms waited
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(trickle())
    status, _, _ = await r.answer()
    feeder.cancel()
    assert status == 408


@pytest.mark.parametrize("route", ["files/stream/write", "files/write", "files/signed/upload"])
async def test_file_uploads_are_paced_not_charged(route: str) -> None:
    mw, _ = make(body_read_timeout_s=0.2)
    r = upload(mw, MiB // 2, path=f"/v1/sandboxes/x/{route}")
    r.feed(b"x" * 1024)  # then nothing (session 11: waited for ever)
    await settle()
    assert mw.budget.used == 0
    status, _, body = await r.answer()
    assert status == 408 and body["error"]["code"] == "request_timeout"
