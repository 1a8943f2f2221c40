"""The X-Request-Id rules (warren/request_context.py): a caller's id is kept only when it is
short and plain; anything else is replaced by a fresh one."""

from __future__ import annotations

import re

import pytest

from warren.request_context import MAX_REQUEST_ID, accept_request_id

FRESH = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("good", ["abc", "lb-1.2:3", "a" * MAX_REQUEST_ID, "trace@svc/7+x=", b"bytes-id"])
def test_plain_ids_are_kept(good: str | bytes) -> None:
    assert accept_request_id(good) == (good.decode() if isinstance(good, bytes) else good)


@pytest.mark.parametrize(
    "hostile",
    [
        None,
        "",
        "a" * (MAX_REQUEST_ID + 1),
        "x" * 100_000,
        "line\nbreak",
        "cr\rlf",
        "tab\tid",
        "nul\x00",
        "esc\x1b[31m",
        "space id",
        'quote"id',
        "{json}",
        "é",
        "\u2028",
        b"\xff\xfe",
    ],
)
def test_hostile_ids_are_replaced(hostile: str | bytes | None) -> None:
    got = accept_request_id(hostile)
    assert FRESH.fullmatch(got) and got != hostile


def test_fresh_ids_differ() -> None:
    assert accept_request_id(None) != accept_request_id(None)
