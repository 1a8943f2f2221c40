"""What a running command's output callbacks and result get, driven frame by frame through the
handle's op (no server: the op yields effects, the test answers them as a transport would)."""

from __future__ import annotations

import base64
from typing import Any

from warren.sdk._commands import CommandHandle
from warren.sdk._transport import Call, WsClose, WsRecv


def _drive(handle: CommandHandle, frames: list[dict[str, Any]]) -> Any:
    """Run ``handle._wait()``: each WsRecv gets the next frame, each Call is made."""
    op = handle._wait()
    value: Any = None
    try:
        while True:
            effect = op.send(value)
            value = None
            if isinstance(effect, WsRecv):
                value = frames.pop(0)
            elif isinstance(effect, Call):
                value = effect.fn(*effect.args)
            else:
                assert isinstance(effect, WsClose), effect
    except StopIteration as done:
        return done.value


def _b64(data: bytes) -> dict[str, Any]:
    return {"type": "stdout", "data_b64": base64.b64encode(data).decode()}


def test_a_character_cut_between_frames_reaches_the_callback_whole() -> None:
    text = "naïve, 東京 🐇\n" * 3
    raw = text.encode()
    got: list[str] = []
    handle = CommandHandle(None, "sb-x", object(), 7, on_stdout=got.append)
    # One byte a frame: every multi-byte character is cut.
    result = _drive(
        handle, [_b64(raw[i : i + 1]) for i in range(len(raw))] + [{"type": "exit", "exit_code": 0}]
    )
    assert "".join(got) == text and "\ufffd" not in "".join(got)
    assert result.stdout == text


def test_bytes_that_never_complete_a_character_are_replaced_at_the_end() -> None:
    got: list[str] = []
    handle = CommandHandle(None, "sb-x", object(), 7, on_stdout=got.append)
    _drive(handle, [_b64(b"ok \xe6\x9d"), {"type": "exit", "exit_code": 0}])
    assert "".join(got) == "ok \ufffd"


def test_output_not_kept_still_reaches_the_callbacks() -> None:
    got: list[str] = []
    handle = CommandHandle(None, "sb-x", object(), 7, on_stdout=got.append, keep_output=False)
    result = _drive(handle, [{"type": "stdout", "data": "a" * 1000}, {"type": "exit", "exit_code": 3}])
    assert got == ["a" * 1000]
    assert (result.stdout, result.stdout_bytes, result.exit_code) == ("", b"", 3)


def test_bytes_callbacks_get_the_output_as_it_came() -> None:
    """``on_stdout_bytes``/``on_stderr_bytes``: each frame's bytes, undecoded (no UTF-8 needed),
    beside the text callback; the text callback still gets whole characters."""
    raw = b"\xff\xfe\x00\x80 caf\xc3"
    got: dict[str, list[Any]] = {"bytes": [], "err": [], "text": []}
    handle = CommandHandle(
        None, "sb-x", object(), 7, on_stdout=got["text"].append,
        on_stdout_bytes=got["bytes"].append, on_stderr_bytes=got["err"].append,
    )  # fmt: skip
    frames = [_b64(raw), _b64(b"\xa9!"), {"type": "stderr", "data_b64": base64.b64encode(b"\x81").decode()}]
    result = _drive(handle, [*frames, {"type": "exit", "exit_code": 0}])
    assert got["bytes"] == [raw, b"\xa9!"] and got["err"] == [b"\x81"]
    assert "".join(got["text"]) == "\ufffd\ufffd\x00\ufffd café!"
    assert result.stdout_bytes == raw + b"\xa9!" and result.stderr_bytes == b"\x81"
