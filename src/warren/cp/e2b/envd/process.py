"""envd's ``process.Process`` service (docs/e2b.md §3.1): proto3 JSON ↔ ``cp/services/
envd_process`` (the rules) and ``envd_process_stream`` (``Start``, ``Connect``)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any

from warren.cp.e2b.envd.call import EnvdCall
from warren.cp.e2b.envd.connect import ConnectError, Message, StreamHandler, UnaryHandler
from warren.cp.services import envd_process as svc
from warren.cp.services import envd_process_stream as streams
from warren.cp.services.envd_process import Ended, EnvdSandbox, Keepalive, Output, ProcessEvent, Started
from warren.cp.services.stream_pace import FramePace

MAX_KEEPALIVE_S = 3600  # a Keepalive-Ping-Interval above this is taken as this


def _sandbox(call: EnvdCall) -> EnvdSandbox:
    return EnvdSandbox(call.state.engine, call.state.pool, call.sandbox)


def _obj(msg: Message, key: str) -> dict[str, Any]:
    v = msg.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConnectError("invalid_argument", f"{key} must be an object")
    return v


def _selector(msg: Message) -> svc.Selector:
    sel = _obj(msg, "process")
    return svc.selector(sel.get("pid"), sel.get("tag"))


def _bytes(v: object, what: str) -> bytes:
    if not isinstance(v, str):
        raise ConnectError("invalid_argument", f"{what} must be base64 bytes")
    try:  # proto3 JSON accepts both alphabets, padded or not
        return base64.b64decode(v.replace("-", "+").replace("_", "/") + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConnectError("invalid_argument", f"{what} is not valid base64") from None


def _keepalive_s(call: EnvdCall) -> float | None:
    raw = call.request.headers.get("keepalive-ping-interval", "")
    if not raw.isascii() or not raw.isdigit() or int(raw) <= 0:
        return None
    return float(min(int(raw), MAX_KEEPALIVE_S))


def event_json(ev: ProcessEvent) -> Message:
    """One ``ProcessEvent`` as ``StartResponse``/``ConnectResponse`` JSON."""
    if isinstance(ev, Started):
        body: Message = {"start": {"pid": ev.pid}}
    elif isinstance(ev, Output):
        body = {"data": {ev.kind: base64.b64encode(ev.data).decode()}}
    elif isinstance(ev, Ended):
        end: Message = {"exitCode": ev.exit_code, "exited": ev.exited, "status": ev.status}
        if ev.error is not None:
            end["error"] = ev.error
        body = {"end": end}
    else:
        assert isinstance(ev, Keepalive)
        body = {"keepalive": {}}
    return {"event": body}


def is_end(msg: Message) -> bool:
    """Whether a ``Start``/``Connect`` message is the process's end (its stream's last)."""
    event = msg.get("event")
    return isinstance(event, dict) and "end" in event


# ------------------------------------------------------------------------------------ streams


async def start(call: EnvdCall, msg: Message) -> AsyncIterator[Message]:
    config = _obj(msg, "process")
    size = _obj(_obj(msg, "pty"), "size") if msg.get("pty") is not None else None
    stdin = msg.get("stdin", False)
    if not isinstance(stdin, bool):
        raise ConnectError("invalid_argument", "stdin must be a boolean")
    spec = svc.spec(
        cmd=config.get("cmd"), args=config.get("args"), env=config.get("envs"), cwd=config.get("cwd"),
        tag=msg.get("tag"), stdin=stdin, user=call.user,
        pty=(size.get("cols"), size.get("rows")) if size is not None else None,
        timeout_ms=call.timeout_ms, keepalive_s=_keepalive_s(call),
    )  # fmt: skip
    max_timeout = call.state.settings.max_exec_timeout_s
    async for ev in streams.start(_sandbox(call), spec, max_timeout_s=max_timeout):
        yield event_json(ev)


async def connect(call: EnvdCall, msg: Message) -> AsyncIterator[Message]:
    async for ev in streams.connect(_sandbox(call), _selector(msg), keepalive_s=_keepalive_s(call)):
        yield event_json(ev)


# -------------------------------------------------------------------------------------- unary


async def list_processes(call: EnvdCall, msg: Message) -> Message:
    procs = await svc.list_running(_sandbox(call))
    out = []
    for p in procs:
        item: Message = {"config": {"cmd": p.cmd, "args": p.args, "envs": {}}, "pid": p.pid}
        if p.tag:
            item["tag"] = p.tag
        out.append(item)
    return {"processes": out}


def _input(msg: Message) -> tuple[bytes, bool]:
    """A ``ProcessInput`` (``stdin`` or ``pty`` bytes) and whether it is for a terminal."""
    if not msg:
        raise ConnectError("invalid_argument", "input needs stdin or pty")
    if "pty" in msg:
        return _bytes(msg["pty"], "input.pty"), True
    return _bytes(msg.get("stdin"), "input.stdin"), False


async def _send(call: EnvdCall, sbx: svc.EnvdSandbox, sel: svc.Selector, data: bytes, pty: bool) -> None:
    limit = call.state.settings.max_streams_per_team
    await svc.send_input(sbx, sel, data, pty=pty, team=call.ctx.team_id, max_streams=limit)


async def send_input(call: EnvdCall, msg: Message) -> Message:
    data, pty = _input(_obj(msg, "input"))
    sel = _selector(msg)
    del msg  # its base64 copy of the input is not kept while the input waits for the process
    await _send(call, _sandbox(call), sel, data, pty)
    return {}


async def send_signal(call: EnvdCall, msg: Message) -> Message:
    await svc.send_signal(_sandbox(call), _selector(msg), svc.parse_signal(msg.get("signal")))
    return {}


async def close_stdin(call: EnvdCall, msg: Message) -> Message:
    await svc.close_stdin(_sandbox(call), _selector(msg))
    return {}


async def update(call: EnvdCall, msg: Message) -> Message:
    if msg.get("pty") is None:
        return {}  # nothing to change
    size = _obj(_obj(msg, "pty"), "size")
    await svc.resize(_sandbox(call), _selector(msg), size.get("cols"), size.get("rows"))
    return {}


async def stream_input(call: EnvdCall, messages: AsyncIterator[Message]) -> Message:
    """``StreamInput``: ``start{process}`` first, then ``data{input}`` and ``keepalive`` messages,
    each input sent before the next message is read. Messages that carry no input (keepalives,
    empty data) have a budget (services/stream_pace.py; past it ``resource_exhausted``): a
    flood of keepalives had a CP core parse them for as long as the call lived."""
    sbx, sel, pace = _sandbox(call), None, FramePace()
    async for msg in messages:
        if sel is None:
            if "start" not in msg:
                raise ConnectError("invalid_argument", "the first StreamInput message must be start")
            sel = _selector(_obj(msg, "start"))
            continue
        if "data" in msg:
            data, pty = _input(_obj(_obj(msg, "data"), "input"))
            del msg
            if not data:
                pace.take()
                continue
            await _send(call, sbx, sel, data, pty)
        elif "keepalive" in msg:
            pace.take()
        else:
            raise ConnectError("invalid_argument", "a StreamInput message is data or keepalive")
    return {}


UNARY: dict[str, UnaryHandler] = {
    "List": list_processes,
    "SendInput": send_input,
    "SendSignal": send_signal,
    "CloseStdin": close_stdin,
    "Update": update,
}
SERVER_STREAMS: dict[str, StreamHandler] = {"Start": start, "Connect": connect}
CLIENT_STREAMS: dict[str, object] = {"StreamInput": stream_input}
