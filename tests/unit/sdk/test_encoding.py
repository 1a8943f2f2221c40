"""Pure logic of exec output encoding, the streaming multipart parser, and SDK error mapping."""

from __future__ import annotations

import base64
import json

import pytest

from warren.cp.multipart import Field_, FileData, FileStart, MultipartStream, PartEnd
from warren.cp.services.exec import parse_signal, selector
from warren.cp.services.exec_stream import OutputEncoder
from warren.cp.services.exec_unary import Output, render
from warren.errors import InvalidRequest
from warren.sdk import (
    AuthenticationError,
    ConflictError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    SandboxUnavailableError,
    ServerError,
    WarrenError,
)
from warren.sdk._commands import argv
from warren.sdk._exceptions import error_from_response
from warren.sdk._exec_frames import decode_exec_response, frame_bytes, stdin_frame
from warren.sdk._files import multipart_upload
from warren.sdk._transport import _iter_upload

# ------------------------------------------------------------------------------- unary exec


async def rendered(stdout: list[bytes], stderr: list[bytes]) -> dict[str, object]:
    released: list[bool] = []
    out = Output(list(stdout), list(stderr), 3, 7)
    body = b"".join([p async for p in render("sb-x", "c", out, lambda: released.append(True))])
    assert released == [True]
    result: dict[str, object] = json.loads(body)
    return result


async def test_unary_answer_is_text_when_both_are_utf8() -> None:
    # A character split between chunks, control characters and quotes JSON must escape.
    euro = "€".encode()
    r = await rendered([b"h\xc3", b"\xa9llo ", euro[:1], euro[1:], b'"\x00\n\\'], [b"err"])
    assert r == {"sandbox_id": "sb-x", "cmd": "c", "stdout": 'héllo €"\x00\n\\', "stderr": "err",
                 "exit_code": 3, "duration_ms": 7, "encoding": "utf-8"}  # fmt: skip


async def test_unary_answer_either_invalid_makes_both_base64() -> None:
    # Chunks whose sizes are not multiples of 3 still make one valid base64 string.
    stdout = [b"o", b"k!", b"abcd", bytes(range(256)) * 300]
    r = await rendered(stdout, [b"\xff", b"\xfe"])
    assert r["encoding"] == "base64"
    assert base64.b64decode(str(r["stdout"])) == b"".join(stdout)
    assert base64.b64decode(str(r["stderr"])) == b"\xff\xfe"
    assert (await rendered([], []))["stdout"] == ""


def test_sdk_decodes_both_encodings() -> None:
    assert decode_exec_response({"stdout": "a", "stderr": "b", "encoding": "utf-8"}) == (b"a", b"b")
    body = {"stdout": base64.b64encode(b"\x80").decode(), "stderr": "", "encoding": "base64"}
    assert decode_exec_response(body) == (b"\x80", b"")


# ------------------------------------------------------------------------------ stream frames


def _bytes_of(frames: list[dict]) -> bytes:
    return b"".join(frame_bytes(f) for f in frames)


def test_output_encoder_text_stays_text_across_split_characters() -> None:
    enc = OutputEncoder("stdout")
    data = "€uro ✓ 𝄞".encode()
    frames = []
    for i in range(len(data)):  # worst case: one byte per chunk
        f = enc.feed(data[i : i + 1])
        if f:
            frames.append(f)
    tail = enc.flush()
    assert tail is None
    assert all("data" in f for f in frames)
    assert _bytes_of(frames) == data


def test_output_encoder_invalid_bytes_go_base64_and_roundtrip() -> None:
    enc = OutputEncoder("stderr")
    chunks = [b"ok ", b"\xff\xfe bad", b" \xe2\x82", b"\xac done", b"\xe2"]
    frames = [f for c in chunks if (f := enc.feed(c))]
    if (t := enc.flush()) is not None:
        frames.append(t)
    assert {f["type"] for f in frames} == {"stderr"}
    assert any("data_b64" in f for f in frames)
    assert _bytes_of(frames) == b"".join(chunks)


def test_output_encoder_random_binary_roundtrip() -> None:
    import random

    rnd = random.Random(7)
    blob = bytes(rnd.randrange(256) for _ in range(20000))
    enc = OutputEncoder("stdout")
    frames = []
    i = 0
    while i < len(blob):
        n = rnd.randrange(1, 700)
        if f := enc.feed(blob[i : i + n]):
            frames.append(f)
        i += n
    if t := enc.flush():
        frames.append(t)
    assert _bytes_of(frames) == blob


def test_stdin_frames() -> None:
    assert stdin_frame("hi") == {"type": "stdin", "data": "hi"}
    assert stdin_frame(b"hi") == {"type": "stdin", "data": "hi"}
    assert stdin_frame(b"\xff") == {"type": "stdin", "data_b64": "/w=="}


def test_argv_shell_and_list() -> None:
    assert argv("echo hi | wc") == ("/bin/sh", ["-c", "echo hi | wc"])
    assert argv(["ls", "-la"]) == ("ls", ["-la"])
    with pytest.raises(ValueError):
        argv([])


def test_signals() -> None:
    assert parse_signal(9) == 9
    assert parse_signal("SIGKILL") == 9
    assert parse_signal("term") == 15
    assert parse_signal("2") == 2
    with pytest.raises(InvalidRequest):
        parse_signal("SIGNOPE")
    with pytest.raises(InvalidRequest):
        parse_signal(0)
    assert selector("42").pid == 42
    assert selector("web").tag == "web"


# --------------------------------------------------------------------------------- multipart


def _sdk_body(path: str, data: bytes) -> tuple[str, bytes]:
    up = multipart_upload(path, data)
    return up.content_type, b"".join(_iter_upload(up))


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 1 << 20])
def test_multipart_roundtrip_any_chunking(chunk: int) -> None:
    payload = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n"
    ctype, body = _sdk_body("/tmp/x y/ü.bin", payload)
    mp = MultipartStream(ctype)
    events = []
    for i in range(0, len(body), chunk):
        events.extend(mp.feed(body[i : i + chunk]))
    assert mp.finished
    assert events[0] == Field_("path", "/tmp/x y/ü.bin")
    assert isinstance(events[1], FileStart) and events[1].name == "file"
    assert isinstance(events[-1], PartEnd)
    assert b"".join(e.data for e in events if isinstance(e, FileData)) == payload


def test_multipart_file_before_path_is_visible_in_order() -> None:
    b = "XyZ"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nDATA\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="path"\r\n\r\n/tmp/a\r\n--{b}--\r\n'
    ).encode()
    events = MultipartStream(f"multipart/form-data; boundary={b}").feed(body)
    assert isinstance(events[0], FileStart)
    assert events[-1] == Field_("path", "/tmp/a")


def test_multipart_needs_boundary() -> None:
    with pytest.raises(InvalidRequest, match="boundary"):
        MultipartStream("application/json")
    with pytest.raises(InvalidRequest, match="boundary"):
        MultipartStream("multipart/form-data")


def test_multipart_field_too_long() -> None:
    b = "B"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="path"\r\n\r\n' + "x" * 5000).encode()
    with pytest.raises(InvalidRequest, match="too long"):
        MultipartStream(f"multipart/form-data; boundary={b}").feed(body)


def test_upload_sources() -> None:
    import io

    for src in (b"abc", "abc", io.BytesIO(b"abc"), iter([b"a", b"", b"bc"])):
        up = multipart_upload("/p", src)
        body = b"".join(_iter_upload(up))
        mp = MultipartStream(up.content_type)
        got = b"".join(e.data for e in mp.feed(body) if isinstance(e, FileData))
        assert got == b"abc"


# ------------------------------------------------------------------------------- SDK errors


def _env(code: str, message: str = "m", **extra: object) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, **extra}}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_request", InvalidArgumentError),
        (401, "unauthorized", AuthenticationError),
        (403, "forbidden", PermissionDeniedError),
        (403, "permission_denied", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (409, "invalid_state", InvalidStateError),
        (413, "too_large", PayloadTooLargeError),
        (413, "output_too_large", PayloadTooLargeError),
        (429, "quota_exceeded", RateLimitedError),
        (429, "rate_limited", RateLimitedError),
        (500, "agent_error", ServerError),
        (502, "agent_error", SandboxUnavailableError),
        (503, "host_unavailable", SandboxUnavailableError),
        (503, "server_busy", ServerError),
    ],
)
def test_error_mapping(status: int, code: str, cls: type[WarrenError]) -> None:
    err = error_from_response(status, _env(code, "boom", sandbox_ids=["sb-1"]))
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, code, "boom")
    assert err.extra == {"sandbox_ids": ["sb-1"]}
    assert isinstance(err, WarrenError)
    assert "boom" in str(err)


def test_error_mapping_without_envelope() -> None:
    err = error_from_response(502, b"<html>bad gateway</html>")
    assert isinstance(err, SandboxUnavailableError)
    assert err.code == "http_error" and "bad gateway" in err.message


def test_invalid_state_is_a_conflict() -> None:
    assert issubclass(InvalidStateError, ConflictError)
