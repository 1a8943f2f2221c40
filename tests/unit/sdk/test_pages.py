"""How far a listing follows a server's pages (``warren.sdk.PageCursors``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from warren.sdk import Files, PageCursors, WarrenError
from warren.sdk._files import LIST_MAX_PAGES
from warren.sdk._transport import Http, HttpResult


def test_at_most_the_bound_of_pages_the_first_included() -> None:
    cursors = PageCursors("the entries", 3, first="")
    assert cursors.follow("a") == "a"  # page 2
    assert cursors.follow("b") == "b"  # page 3
    with pytest.raises(WarrenError, match="past 3 pages") as caught:
        cursors.follow("c")
    assert caught.value.code == "bad_response"


@pytest.mark.parametrize("again", ["", "a"])
def test_a_cursor_is_followed_once(again: str) -> None:
    cursors = PageCursors("the entries", 100, first="")
    cursors.follow("a")
    with pytest.raises(WarrenError, match="already sent") as caught:
        cursors.follow(again)
    assert caught.value.code == "bad_response"


def test_offsets_too() -> None:
    offsets = PageCursors("a log", 10, first=0)
    assert offsets.follow(15) == 15
    with pytest.raises(WarrenError):
        offsets.follow(0)


def test_files_list_still_reads_a_listing_of_many_pages_to_its_end() -> None:
    """A server that pages as the platform does (a new cursor each page, then the last page):
    every entry, in order, however many pages below the bound."""
    files = Files(None, "sb-x")
    op = files._list("/root")
    asked: list[str] = []
    value: Any = None
    try:
        while True:
            effect = op.send(value)
            assert isinstance(effect, Http) and effect.path.endswith("/files/list")
            asked.append(effect.json.get("cursor", ""))
            n = len(asked)
            last = n == LIST_MAX_PAGES
            headers = {} if last else {"x-has-more": "true", "x-next-cursor": f"/root/f{n:05d}"}
            value = HttpResult(200, json.dumps([{"name": f"f{n:05d}"}]).encode(), headers)
    except StopIteration as done:
        entries = done.value
    assert [e.name for e in entries] == [f"f{n:05d}" for n in range(1, LIST_MAX_PAGES + 1)]
    assert asked[:3] == ["", "/root/f00001", "/root/f00002"]
