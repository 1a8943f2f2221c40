"""The unary exec: its small answer (``render_whole``) is byte for byte what ``render`` writes;
after the exit event it waits for the call's own end (bounded)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from warren.cp.services import exec_unary
from warren.cp.services.budget import ByteBudget
from warren.cp.services.exec_unary import Output, render, render_whole
from warren.rpc import hostagent_pb2 as pb

EURO = "€".encode()
CASES = [
    ([], []),
    ([b"hello\n"], []),
    ([b"h\xc3", b"\xa9llo ", EURO[:1], EURO[1:], '"\x00\n\\\x7f\u2028'.encode()], [b"err", b"\t"]),
    (["𝄞 ✓ ünïcödé".encode()], [b'"quoted" </script>']),
    ([b"o", b"k!", b"abcd", bytes(range(256)) * 40], [b"\xff", b"\xfe"]),  # both base64
    ([b"ok"], [b"\xc3"]),  # a truncated character at the end: base64
    ([b"\xed\xa0\x80"], []),  # an encoded surrogate is not UTF-8
    ([EURO[:2]], [EURO[2:]]),  # split across the two streams: neither is UTF-8 alone
]


@pytest.mark.parametrize(("stdout", "stderr"), CASES)
@pytest.mark.parametrize(("sid", "cmd"), [("sb_x", "true"), ("sb_y", 'é"\n')])
async def test_whole_answer_is_what_render_writes(
    stdout: list[bytes], stderr: list[bytes], sid: str, cmd: str
) -> None:
    released: list[bool] = []
    streamed = Output(list(stdout), list(stderr), 3, 7)
    expected = b"".join([p async for p in render(sid, cmd, streamed, lambda: released.append(True))])
    assert released == [True]
    assert render_whole(sid, cmd, Output(list(stdout), list(stderr), 3, 7)) == expected


class _Call:
    """A stand-in for grpc.aio's call: these events, then (``hang``) nothing until cancelled."""

    def __init__(self, events: list[pb.ExecEvent], hang: bool) -> None:
        self.events, self.hang, self.cancelled = events, hang, False

    async def _gen(self) -> AsyncIterator[pb.ExecEvent]:
        for ev in self.events:
            yield ev
        if self.hang:
            await asyncio.Event().wait()

    def __aiter__(self) -> AsyncIterator[pb.ExecEvent]:
        if not hasattr(self, "_it"):
            self._it = self._gen()
        return self._it

    def cancel(self) -> bool:
        self.cancelled = True
        return True


@pytest.mark.parametrize("hang", [False, True])
async def test_collect_waits_for_the_calls_end_after_the_exit(
    hang: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events after the exit are ignored; an agent that keeps the call open is cut off.
    monkeypatch.setattr(exec_unary, "_END_WAIT_S", 0.05)
    events = [
        pb.ExecEvent(stdout=b"hi"),
        pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=3)),
        pb.ExecEvent(stdout=b"late"),
    ]
    call = _Call(events, hang)
    held = exec_unary._Held(ByteBudget(1 << 20))
    out = await exec_unary._collect(call, held, 30, 1 << 20, asyncio.Event())
    assert (out.stdout, out.exit_code, held.bytes, call.cancelled) == ([b"hi"], 3, 2, True)
