"""Process selectors and signal names from URL paths and bodies: bad ones are 400s, never 500s."""

from __future__ import annotations

import pytest

from warren.cp.services.exec import parse_signal, selector
from warren.errors import InvalidRequest


def test_digits_select_a_pid_and_anything_else_a_tag() -> None:
    assert selector("42").pid == 42
    assert selector("web-1").tag == "web-1"
    # Non-ASCII digits are not a pid (int() would refuse them): a tag like any other text.
    assert selector("²").tag == "²"
    assert selector("٤٢").tag == "٤٢"


@pytest.mark.parametrize("text", ["0", "2147483648", "99999999999"])
def test_a_pid_outside_int32_is_a_bad_request(text: str) -> None:
    with pytest.raises(InvalidRequest, match="pid must be in"):
        selector(text)


def test_signals_by_number_or_name() -> None:
    assert parse_signal("9") == 9
    assert parse_signal("term") == 15
    assert parse_signal("SIGKILL") == 9
    for bad in ("²", "0", "65", "SIGNOPE", ""):
        with pytest.raises(InvalidRequest):
            parse_signal(bad)
