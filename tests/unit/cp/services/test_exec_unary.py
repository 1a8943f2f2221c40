"""The unary exec's small answer (``render_whole``) is byte for byte what ``render`` writes."""

from __future__ import annotations

import pytest

from warren.cp.services.exec_unary import Output, render, render_whole

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
