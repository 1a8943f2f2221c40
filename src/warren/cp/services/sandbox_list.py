"""Sandbox metadata and the filtered, paginated sandbox list (E2B's list, docs/e2b.md §2).

- Metadata: free-form string pairs a client attaches at create, bounded (:data:`MAX_PAIRS`
  pairs, keys up to :data:`MAX_KEY` characters, values up to :data:`MAX_VALUE`); a list filter
  matches sandboxes whose metadata contains every pair asked for.
- The list: the team's live sandboxes (running and paused; pending, stopped and errored ones are
  not listed), filtered by metadata, state, template and start time, ordered by start time (then
  id, so the order is total), one page of at most :data:`MAX_LIMIT` at a time.
- The cursor (``nextToken``) is opaque to clients: the last row's sort key, base64url. A page
  continues strictly after it, so sandboxes created between two pages never repeat a row.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.db.engine import autocommit
from warren.cp.db.tables import sandboxes
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.strict import check_text
from warren.errors import InvalidRequest

MAX_PAIRS = 64
MAX_KEY = 128
MAX_VALUE = 1024
MAX_LIMIT = 100
MAX_FILTER = 64 * 1024  # the metadata filter's raw text
MAX_CURSOR = 256
LIVE_STATES = ("running", "paused")

Order = Literal["asc", "desc"]


def check_metadata(value: object) -> dict[str, str]:
    """Create's metadata: a JSON object of strings within the bounds (400 otherwise)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be an object of strings")
    if len(value) > MAX_PAIRS:
        raise InvalidRequest(f"metadata has more than {MAX_PAIRS} pairs")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidRequest("metadata keys and values must be strings")
        if not k or len(k) > MAX_KEY:
            raise InvalidRequest(f"metadata keys must be 1-{MAX_KEY} characters")
        if len(v) > MAX_VALUE:
            raise InvalidRequest(f"metadata values must be at most {MAX_VALUE} characters")
        _check_text(k + v)
    return dict(value)


def _check_text(s: str) -> None:
    # PostgreSQL's jsonb refuses NUL and lone surrogates: a 400, not a 500.
    if "\x00" in s:
        raise InvalidRequest("metadata may not contain NUL characters")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest("metadata must be valid Unicode text") from e


def parse_metadata_filter(raw: str | None) -> dict[str, str]:
    """E2B's ``metadata`` query value: ``k=v&k2=v2`` whose keys and values are URL-encoded once
    more (the SDK quotes each, then url-encodes the pairs)."""
    if not raw:
        return {}
    if len(raw) > MAX_FILTER:
        raise InvalidRequest("metadata filter too long")
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_PAIRS)
    except ValueError:  # more pairs than max_num_fields (session 12: a 500)
        raise InvalidRequest(f"metadata filter has more than {MAX_PAIRS} pairs") from None
    out = {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}
    for k, v in out.items():
        if len(k) > MAX_KEY or len(v) > MAX_VALUE:
            raise InvalidRequest("metadata filter key or value too long")
        _check_text(k + v)
    return out


def parse_states(raw: Sequence[str]) -> tuple[str, ...]:
    """``state`` (repeated, or comma-separated): running and/or paused; none means both."""
    states = [s.strip() for item in raw for s in item.split(",") if s.strip()]
    for s in states:
        if s not in LIVE_STATES:
            raise InvalidRequest("state must be running or paused")
    return tuple(dict.fromkeys(states)) or LIVE_STATES


def parse_limit(raw: str | None, default: int = MAX_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 4 or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be 1-{MAX_LIMIT}")
    return int(raw)


def in_utc(at: datetime, what: str) -> datetime:
    """A client's time as UTC, or a 400: naive, or past year 9999 (or before year 1) once moved
    to UTC, which the database driver cannot encode (session 12: a 500)."""
    if at.tzinfo is None:
        raise InvalidRequest(f"{what} must carry a time zone")
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(f"{what} is out of range") from None


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    text = f"{at.astimezone(UTC).isoformat()}|{row_id.hex}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, uuid.UUID]:
    """The sort key a ``nextToken`` names (400 for anything this module did not make)."""
    if len(token) > MAX_CURSOR:
        raise InvalidRequest("invalid nextToken")
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        at_s, id_s = text.split("|")
        at = datetime.fromisoformat(at_s)
        row_id = uuid.UUID(hex=id_s)
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise InvalidRequest("invalid nextToken") from e
    return in_utc(at, "nextToken"), row_id


@dataclass(frozen=True)
class ListQuery:
    metadata: Mapping[str, str]
    states: tuple[str, ...] = LIVE_STATES
    template: str = ""
    started_after: datetime | None = None
    order: Order = "desc"
    limit: int = MAX_LIMIT
    cursor: str = ""


@dataclass(frozen=True)
class Page:
    rows: list[RowMapping]
    next_token: str | None


def _sort_key() -> Any:
    # A sandbox's start time; its creation time until it has one (a pending row is not listed,
    # but a row may have been marked running without it in older versions).
    return sa.func.coalesce(sandboxes.c.started_at, sandboxes.c.created_at)


async def list_page(engine: AsyncEngine, ctx: AuthContext, query: ListQuery) -> Page:
    """One page of the team's live sandboxes matching ``query``, and the next page's token
    (None when this is the last page)."""
    team_uuid = require_team(ctx)
    key = _sort_key()
    stmt = sa.select(sandboxes, key.label("sort_at")).where(
        sandboxes.c.team_id == team_uuid, sandboxes.c.status.in_(query.states)
    )
    if query.metadata:
        stmt = stmt.where(sandboxes.c.metadata.contains(dict(query.metadata)))
    if query.template:
        check_text(query.template, "template")  # NUL: PostgreSQL's error, a 500 (session 12)
        stmt = stmt.where(sandboxes.c.template == query.template)
    if query.started_after is not None:
        stmt = stmt.where(key >= query.started_after)
    if query.cursor:
        at, after_id = decode_cursor(query.cursor)
        past = sa.tuple_(key, sandboxes.c.id)
        stmt = stmt.where(past > sa.tuple_(sa.literal(at), sa.literal(after_id)) if query.order == "asc"
                          else past < sa.tuple_(sa.literal(at), sa.literal(after_id)))  # fmt: skip
    direction = sa.asc if query.order == "asc" else sa.desc
    stmt = stmt.order_by(direction(key), direction(sandboxes.c.id)).limit(query.limit + 1)
    async with autocommit(engine) as conn:
        rows = list((await conn.execute(stmt)).mappings().all())
    if len(rows) <= query.limit:
        return Page(rows, None)
    rows = rows[: query.limit]
    last = rows[-1]
    return Page(rows, encode_cursor(last["sort_at"], last["id"]))
