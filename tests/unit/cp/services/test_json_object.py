"""One JSON-object parse for request bodies and control frames (services/strict.json_object):
each caller keeps its own 400 messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from warren.cp.services.exec import StdinBody, parse_body
from warren.cp.services.pty import _control
from warren.cp.services.strict import json_object
from warren.errors import InvalidRequest


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(InvalidRequest) as e:
        call()
    return e.value.message


def test_an_object_parses() -> None:
    assert json_object(b'{"a": [1, {"b": null}]}', "bad", "not an object") == {"a": [1, {"b": None}]}
    assert json_object('{"a": 1}', "bad", "not an object") == {"a": 1}
    assert json_object(bytearray(b"{}"), "bad", "not an object") == {}


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"a": ', b"\xff\xfe", b"[" * 100_000])
def test_what_does_not_parse_is_the_first_message(raw: bytes) -> None:
    assert _refused(lambda: json_object(raw, "bad", "not an object")) == "bad"


@pytest.mark.parametrize("raw", [b"[1]", b"1", b'"s"', b"null", b"true"])
def test_another_json_value_is_the_second_message(raw: bytes) -> None:
    assert _refused(lambda: json_object(raw, "bad", "not an object")) == "not an object"


def test_the_callers_keep_their_messages() -> None:
    assert _refused(lambda: parse_body(StdinBody, b"{nope")) == "invalid JSON body"
    assert _refused(lambda: parse_body(StdinBody, b"[]")) == "invalid JSON body: expected an object"
    assert parse_body(StdinBody, b"  ").close is False  # an empty body is {}
    assert _refused(lambda: _control("{nope")) == "a control frame must be JSON"
    assert _refused(lambda: _control("[1]")) == "a control frame must be a JSON object"
    assert _control('{"type": "resize"}') == {"type": "resize"}
