"""Prefixed base36 IDs (SPEC §0.2): exact round trip, strict parsing."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren import ids
from warren.errors import InvalidRequest

uuids = st.integers(min_value=0, max_value=(1 << 128) - 1).map(lambda n: uuid.UUID(int=n))
kinds = st.sampled_from(list(ids.Kind))


@given(kinds, uuids)
def test_round_trip(kind: ids.Kind, u: uuid.UUID) -> None:
    text = ids.format_id(kind, u)
    assert text.startswith(kind.value)
    body = text[len(kind.value) :]
    assert len(body) == 25 and set(body) <= set("0123456789abcdefghijklmnopqrstuvwxyz")
    assert ids.parse_id(kind, text) == u


@given(uuids, uuids)
def test_order_preserving(a: uuid.UUID, b: uuid.UUID) -> None:
    # Fixed width, big-endian digits: string order is numeric order.
    assert (ids.base36(a) < ids.base36(b)) == (a.int < b.int)


def _one_digit_at_a_time(u: uuid.UUID) -> str:
    """The definition (the loop ``ids.base36`` was until session 14): the reference."""
    n, out = u.int, []
    while n:
        n, r = divmod(n, 36)
        out.append("0123456789abcdefghijklmnopqrstuvwxyz"[r])
    return "".join(reversed(out)).rjust(25, "0")


EDGES = [0, 1, 35, 36, 1295, 1296, 36**12, 2**64 - 1, 2**64, 36**24 - 1, 36**24, (1 << 128) - 1]


@pytest.mark.parametrize("n", EDGES, ids=[f"n{i}" for i in range(len(EDGES))])
def test_base36_matches_the_definition_at_the_edges(n: int) -> None:
    u = uuid.UUID(int=n)
    assert ids.base36(u) == _one_digit_at_a_time(u)
    assert int(ids.base36(u), 36) == n
    assert ids.parse_id(ids.Kind.SANDBOX, ids.sandbox_id(u)) == u


@given(uuids)
def test_base36_matches_the_definition(u: uuid.UUID) -> None:
    assert ids.base36(u) == _one_digit_at_a_time(u)
    assert ids.base36(u) == _one_digit_at_a_time(u)  # the cached answer too


def test_base36_small_values() -> None:
    assert ids.base36(uuid.UUID(int=0)) == "0" * 25
    assert ids.base36(uuid.UUID(int=1)) == "0" * 24 + "1"
    assert ids.base36(uuid.UUID(int=35)) == "0" * 24 + "z"
    assert ids.base36(uuid.UUID(int=36)) == "0" * 23 + "10"


def test_known_values() -> None:
    assert ids.format_id(ids.Kind.TEAM, ids.ZERO_UUID) == "team-" + "0" * 25
    assert ids.base36(uuid.UUID(int=35)) == "0" * 24 + "z"
    assert ids.base36(uuid.UUID(int=36)) == "0" * 23 + "10"
    top = uuid.UUID(int=(1 << 128) - 1)
    assert ids.base36(top) == "f5lxx1zz5pnorynqglhzmsp33"
    assert ids.parse_id(ids.Kind.USER, "usr-f5lxx1zz5pnorynqglhzmsp33") == top
    assert ids.sandbox_id(ids.ZERO_UUID).startswith("sb-")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sb-",
        "sb-" + "0" * 24,  # too short
        "sb-" + "0" * 26,  # too long
        "SB-" + "0" * 25,  # prefix is case-sensitive
        "sb-" + "A" * 25,  # upper case is not in the alphabet
        "sb-" + "0" * 24 + "-",
        "sb-" + "0" * 24 + "\n",
        "sb-" + "0" * 25 + "\n",  # `$` matched before a final newline (session 14)
        " sb-" + "0" * 25,
        "sb-" + "0" * 25 + " ",
        "cl-" + "0" * 25,  # the reference's prefix is not ours
        "usr-" + "0" * 25,  # another kind's prefix
        "sb-f5lxx1zz5pnorynqglhzmsp34",  # one past 2**128 - 1
        "sb-zzzzzzzzzzzzzzzzzzzzzzzzz",
        "sb-" + "\u0660" * 25,  # unicode digits are not ASCII digits
    ],
)
def test_strict_parsing_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest):
        ids.parse_id(ids.Kind.SANDBOX, text)


@given(kinds, st.text(max_size=40))
def test_parse_never_crashes(kind: ids.Kind, text: str) -> None:
    # Arbitrary input either parses to a value that formats back to itself, or is a 400.
    try:
        u = ids.parse_id(kind, text)
    except InvalidRequest as e:
        assert e.code == "invalid_request"
    else:
        assert ids.format_id(kind, u) == text


def test_parse_error_names_the_thing() -> None:
    with pytest.raises(InvalidRequest, match="invalid team ID"):
        ids.parse_id(ids.Kind.TEAM, "nope")
    with pytest.raises(InvalidRequest, match="invalid team_id"):
        ids.parse_id(ids.Kind.TEAM, "nope", what="team_id")


def test_new_ids_are_unique_and_parse() -> None:
    seen = set()
    for _ in range(1000):
        u, text = ids.new_id(ids.Kind.API_KEY)
        assert ids.parse_id(ids.Kind.API_KEY, text) == u
        seen.add(u)
    assert len(seen) == 1000
