"""The clients' rule for a caller's value in a REST path (warren/url_path.py)."""

from __future__ import annotations

import uuid

import pytest

from warren import ids, url_path


def test_a_sandbox_id_of_the_platforms_shape_passes_and_nothing_else() -> None:
    for _ in range(50):
        sid = ids.sandbox_id(uuid.uuid4())
        assert url_path.sandbox_id(sid) == sid
    good = ids.sandbox_id(uuid.uuid4())
    for bad in (
        f"{good}/ports/8000/x",  # session 37: into a stranger's public port
        f"{good}%2Fports%2F8000",
        "../snapshots/prod",
        good + "\n",
        good.upper(),
        good[:-1],
        "",
        None,
        7,
    ):
        with pytest.raises(url_path.PathSegmentError):
            url_path.sandbox_id(bad)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("snap-1", "snap-1"),
        ("a/../../sandboxes/sb-x", "a%2F..%2F..%2Fsandboxes%2Fsb-x"),
        ("50%?#x y", "50%25%3F%23x%20y"),
        ("..x", "..x"),
        (42, "42"),
    ],
)
def test_a_value_stays_one_segment(value: object, quoted: str) -> None:
    assert url_path.segment(value, "name") == quoted


@pytest.mark.parametrize("value", ["", ".", "..", None, True, 1.5, b"x", "a\x00b", "\udfff", "x\ud800y"])
def test_what_a_url_resolves_away_or_is_no_text_is_refused(value: object) -> None:
    with pytest.raises(url_path.PathSegmentError, match="not a valid name"):
        url_path.segment(value, "name")
