"""envd's server streams (cp/e2b/envd/connect.py): a process's end goes out with the
end-of-stream envelope in one chunk; every other message as it comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from warren.cp.e2b.envd.connect import ConnectError, end_stream, envelope, stream_response
from warren.cp.e2b.envd.process import is_end

START = {"event": {"start": {"pid": 7}}}
END = {"event": {"end": {"exitCode": 0, "exited": True, "status": "exit status 0"}}}


def _chunks(*messages: dict[str, object], fail: Exception | None = None) -> list[bytes]:
    errors: list[BaseException] = []

    async def source() -> AsyncIterator[dict[str, object]]:
        for m in messages:
            yield m
        if fail is not None:
            raise fail

    async def read() -> list[bytes]:
        resp = stream_response(source(), errors.append, final=is_end)
        return [c if isinstance(c, bytes) else c.encode() async for c in resp.body_iterator]

    out = asyncio.run(read())
    assert len(errors) == (fail is not None)
    return out


def test_the_end_goes_with_the_end_of_stream() -> None:
    assert _chunks(START, END) == [envelope(START), envelope(END) + end_stream()]


def test_same_bytes_as_one_chunk_per_message() -> None:
    assert b"".join(_chunks(START, END)) == envelope(START) + envelope(END) + end_stream()


def test_a_message_after_an_end_flushes_it_first() -> None:
    assert _chunks(END, START) == [envelope(END), envelope(START), end_stream()]


def test_an_error_after_the_end_follows_it() -> None:
    err = ConnectError("internal", "boom")
    assert _chunks(START, END, fail=err) == [envelope(START), envelope(END) + end_stream(err)]


def test_is_end() -> None:
    assert is_end(END) and not is_end(START) and not is_end({"keepalive": {}}) and not is_end({})
