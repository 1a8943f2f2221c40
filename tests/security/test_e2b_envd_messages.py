"""E2B's envd plane (docs/e2b.md §3) decodes every Connect message a client sends: hostile JSON
is refused as ``invalid_argument`` (400), never an internal error. Found by probing a live
listener: a lone surrogate in a path, and JSON nested 100 000 deep, both answered 500."""

from __future__ import annotations

import pytest

from warren.cp.e2b.envd.connect import ConnectError, decode_message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"path": "/tmp/\\ud800"}',  # a lone high surrogate
        b'{"path": "/tmp/\\uDC00x"}',  # a lone low one, upper-case escape
        b'{"a": {"b": ["\\udfff"]}}',  # nested
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser recurses
        b'{"path": "\xff"}',  # not UTF-8
        b"[1, 2]",  # not an object
        b'{"path": ',  # truncated
    ],
    ids=["high", "low", "nested", "deep", "not-utf8", "array", "truncated"],
)
def test_hostile_messages_are_invalid_argument(raw: bytes) -> None:
    with pytest.raises(ConnectError) as e:
        decode_message(raw)
    assert e.value.code == "invalid_argument"


def test_a_surrogate_pair_is_a_character_not_a_refusal() -> None:
    assert decode_message(b'{"path": "/tmp/\\ud83d\\ude00"}') == {"path": "/tmp/\U0001f600"}
    assert decode_message(b"") == {}
