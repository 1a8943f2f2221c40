"""One rule for a frame's optional text field (services/strict.optional_text), used by the exec
stream's and the terminal's first frames."""

from __future__ import annotations

import json

import pytest

from warren.cp.services.exec_stream import _start_request
from warren.cp.services.pty import first_request
from warren.cp.services.strict import optional_text
from warren.errors import InvalidRequest


def test_absent_or_null_is_empty_and_a_string_is_itself() -> None:
    assert optional_text({}, "cwd") == ""
    assert optional_text({"cwd": None}, "cwd") == ""
    assert optional_text({"cwd": "/srv"}, "cwd") == "/srv"


@pytest.mark.parametrize("value", [5, True, ["a"], {"a": 1}], ids=["int", "bool", "list", "object"])
def test_anything_but_a_string_is_refused(value: object) -> None:
    with pytest.raises(InvalidRequest, match=r"^cwd must be a string$"):
        optional_text({"cwd": value}, "cwd")


@pytest.mark.parametrize("value", ["a\x00b", "\udfff"], ids=["nul", "lone-surrogate"])
def test_text_that_cannot_be_sent_on_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid cwd: "):
        optional_text({"cwd": value}, "cwd")


def test_the_exec_stream_and_the_terminal_read_user_alike() -> None:
    for frame in ({"user": 7}, {"user": "ro\x00ot"}, {"user": "../etc"}):
        with pytest.raises(InvalidRequest):
            _start_request("sb", {"cmd": "true", **frame}, 60)
        with pytest.raises(InvalidRequest):
            first_request("sb", json.dumps({"type": "start", "cols": 80, "rows": 24, **frame}))
    assert _start_request("sb", {"cmd": "true", "user": "root"}, 60).user == "root"
    assert first_request("sb", '{"type": "start", "cols": 80, "rows": 24}').start.user == ""
