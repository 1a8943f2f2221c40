"""The rules of E2B envd's processes that need no sandbox (docs/e2b.md §3.1): exit mapping,
selectors, start requests, signals, keepalives, input to an exited process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from warren.cp.services.envd_process import (
    Ended,
    Keepalive,
    ended,
    input_refused_as_exited,
    parse_signal,
    selector,
    spec,
)
from warren.cp.services.envd_process_stream import with_keepalive
from warren.errors import AgentError, InvalidRequest


def test_exit_mapping_is_envds() -> None:
    assert ended(0) == Ended(0, True, "exit status 0", None)
    assert ended(3) == Ended(3, True, "exit status 3", "exit status 3")
    assert ended(-9) == Ended(-1, False, "signal: killed", "signal: killed")
    assert ended(-15) == Ended(-1, False, "signal: terminated", "signal: terminated")
    assert ended(-40).status == "signal: signal 40"
    assert ended(0, "the guest lost it") == Ended(0, True, "exit status 0", "the guest lost it")


def test_selector() -> None:
    assert selector(12, None).pid == 12 and selector("12", None).pid == 12
    assert selector(None, "web").tag == "web"
    bad_pids: list[object] = [0, -1, 2**31, "1x", "²", True, 1.5, []]
    for pid in bad_pids:
        with pytest.raises(InvalidRequest):
            selector(pid, None)
    for tag in (None, "", 5, "a\x00b"):
        with pytest.raises(InvalidRequest):
            selector(None, tag)


def _spec(**kw: object) -> object:
    base: dict[str, object] = {
        "cmd": "/bin/bash", "args": ["-c", "true"], "env": {}, "cwd": None, "tag": None, "stdin": False,
        "user": None, "pty": None, "timeout_ms": None, "keepalive_s": None,
    }  # fmt: skip
    return spec(**(base | kw))  # type: ignore[arg-type]


def test_spec_bounds() -> None:
    assert _spec(user="root", cwd="sub", pty=(80, 24)) is not None
    bad: list[dict[str, object]] = [
        {"cmd": ""}, {"cmd": 5}, {"args": "x"}, {"args": [1]}, {"args": ["a"] * 5000},
        {"args": ["x" * (1 << 20)]}, {"env": {"A=B": "c"}}, {"env": {f"V{i}": "x" for i in range(300)}},
        {"cwd": 5}, {"tag": ["x"]}, {"user": "bad user"}, {"pty": (0, 24)}, {"pty": (80, 1001)},
        {"pty": (True, 24)}, {"cmd": "a\x00b"},
    ]  # fmt: skip
    for kw in bad:
        with pytest.raises(InvalidRequest):
            _spec(**kw)


def test_signals() -> None:
    assert parse_signal("SIGNAL_SIGKILL") == 9 and parse_signal(15) == 15
    for sig in ("SIGKILL", "SIGNAL_SIGSTOP", 19, 0, None, True, 9.0):
        with pytest.raises(InvalidRequest):
            parse_signal(sig)


async def test_keepalive_fills_idle_stretches_only() -> None:
    release = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        yield 1
        await release.wait()
        yield 2

    got: list[object] = []
    async for item in with_keepalive(source(), 0.01):
        got.append(item)
        if len(got) == 3:
            release.set()
    assert got[0] == 1 and got[1] == Keepalive() and got[-1] == 2
    assert [x async for x in with_keepalive(source_now(), None)] == [1, 2]


async def source_now() -> AsyncIterator[int]:
    yield 1
    yield 2


def test_input_to_an_exited_process_is_told_by_the_guests_kind() -> None:
    """SendInput's not_found: the kind the agent sends (any words); the words alone only from
    agents and guests that send no ``exited`` kind (before session 29), whose words are fixed."""
    words = "process 7 has exited: it takes no input"

    def refused(message: str, kind: str | None, rpc_code: str = "INVALID_ARGUMENT") -> bool:
        return input_refused_as_exited(AgentError(message, rpc_code=rpc_code, guest_kind=kind))

    assert refused("reworded: gone", "exited")
    assert refused(words, None)  # an older agent: no kind sent
    assert refused(words, "invalid_argument")  # an older guest behind a newer agent
    assert not refused(words, "not_found")  # a kind that says otherwise wins over words
    assert not refused(words, None, rpc_code="INTERNAL")
    assert not refused("process 7 has no open stdin", "invalid_argument")
    assert not refused("process 7 has no open stdin", None)
