"""Metadata bounds, the list's filters and its opaque cursor (``services/sandbox_list.py``);
the paginated list against a real database."""

from __future__ import annotations

import base64
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from tests.unit.cp.services.e2b_rows import sandbox, team_and_host
from warren import clock
from warren.cp.services import sandbox_list as sl
from warren.cp.services.context import AuthContext
from warren.errors import InvalidRequest


def test_metadata_bounds() -> None:
    assert sl.check_metadata(None) == {}
    assert sl.check_metadata({"a": "b"}) == {"a": "b"}
    ok = {f"k{i}": "v" * sl.MAX_VALUE for i in range(sl.MAX_PAIRS)}
    assert sl.check_metadata(ok) == ok
    bad = [
        {f"k{i}": "v" for i in range(sl.MAX_PAIRS + 1)},
        {"k" * (sl.MAX_KEY + 1): "v"},
        {"": "v"},
        {"k": "v" * (sl.MAX_VALUE + 1)},
        {"k": 1},
        {"k": "a\x00b"},
        {"k": "\udfff"},
        ["k", "v"],
    ]
    for value in bad:
        with pytest.raises(InvalidRequest):
            sl.check_metadata(value)


def test_metadata_filter_as_the_sdk_encodes_it() -> None:
    pairs = {"a b": "x&y=z", "plain": "1", "pct": "100%"}
    # The SDK quotes each key and value, then url-encodes the pairs.
    raw = urllib.parse.urlencode({urllib.parse.quote(k): urllib.parse.quote(v) for k, v in pairs.items()})
    assert sl.parse_metadata_filter(raw) == pairs
    assert sl.parse_metadata_filter("") == {}
    with pytest.raises(InvalidRequest):
        sl.parse_metadata_filter("k=" + "v" * (sl.MAX_VALUE + 1))


def test_states_and_limit() -> None:
    assert sl.parse_states([]) == ("running", "paused")
    assert sl.parse_states(["paused"]) == ("paused",)
    assert sl.parse_states(["running,paused", "running"]) == ("running", "paused")
    with pytest.raises(InvalidRequest):
        sl.parse_states(["stopped"])
    assert sl.parse_limit(None) == 100 and sl.parse_limit("1") == 1 and sl.parse_limit("100") == 100
    for bad in ("0", "101", "-1", "x", "1e2", "00000000001"):
        with pytest.raises(InvalidRequest):
            sl.parse_limit(bad)


def test_cursor_round_trip_and_refusals() -> None:
    at, row = datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=UTC), uuid.uuid4()
    assert sl.decode_cursor(sl.encode_cursor(at, row)) == (at, row)
    for bad in ("", "!!", "bm90IGEgY3Vyc29y", "x" * (sl.MAX_CURSOR + 1), sl.encode_cursor(at, row)[:-3]):
        with pytest.raises(InvalidRequest):
            sl.decode_cursor(bad)


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_times_past_the_drivers_range_are_400(at: str) -> None:
    """Session 12: in range as written, out of it once in UTC; the driver's OverflowError was a 500."""
    with pytest.raises(InvalidRequest):
        sl.in_utc(datetime.fromisoformat(at), "startedAfter")
    text = f"{at}|{uuid.uuid4().hex}".encode()
    with pytest.raises(InvalidRequest):
        sl.decode_cursor(base64.urlsafe_b64encode(text).decode().rstrip("="))


def test_a_metadata_filter_of_too_many_pairs_is_400() -> None:
    with pytest.raises(InvalidRequest):
        sl.parse_metadata_filter("a=b&" * (sl.MAX_PAIRS + 1))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "sandboxes", "hosts", pool_size=2) as e:
        yield e


async def _all(engine: AsyncEngine, ctx: AuthContext, q: sl.ListQuery) -> list[list[uuid.UUID]]:
    pages = []
    while True:
        page = await sl.list_page(engine, ctx, q)
        pages.append([r["id"] for r in page.rows])
        if page.next_token is None:
            return pages
        q = sl.ListQuery(**{**q.__dict__, "cursor": page.next_token})


async def test_pages_are_disjoint_and_ordered(engine: AsyncEngine) -> None:
    team, host = await team_and_host(engine)
    other_team, _ = await team_and_host(engine)
    t0 = clock.now()
    made = [
        await sandbox(
            engine, team, host, metadata={"batch": "a", "i": str(i)}, started_at=t0 + timedelta(seconds=i)
        )
        for i in range(5)
    ]
    await sandbox(engine, team, host, metadata={"batch": "b"})
    await sandbox(engine, team, host, status="stopped", metadata={"batch": "a"})
    await sandbox(engine, other_team, host, metadata={"batch": "a"})
    ctx = AuthContext(kind="api_key", team_id=team)
    desc = await _all(engine, ctx, sl.ListQuery(metadata={"batch": "a"}, limit=2))
    assert desc == [made[4:2:-1], made[2:0:-1], made[:1]]
    asc = await _all(engine, ctx, sl.ListQuery(metadata={"batch": "a"}, limit=2, order="asc"))
    assert asc == [made[0:2], made[2:4], made[4:]]
    one = await _all(engine, ctx, sl.ListQuery(metadata={"batch": "a", "i": "3"}))
    assert one == [[made[3]]]
    after = await _all(
        engine, ctx, sl.ListQuery(metadata={"batch": "a"}, started_after=t0 + timedelta(seconds=3))
    )
    assert after == [[made[4], made[3]]]
