"""External IDs: a prefix plus the UUID written as 25 base36 digits (docs/spec.md §0.2).

Every primary key is a UUID. Outside the database it is shown as e.g. ``sb-0a1b…`` and parsing
demands the exact prefix and exactly 25 characters of ``[0-9a-z]``; anything else raises
:class:`warren.errors.InvalidRequest` (HTTP 400).
"""

from __future__ import annotations

import functools
import re
import uuid
from enum import StrEnum

from warren.errors import InvalidRequest

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_WIDTH = 25
# fullmatch: ``$`` would also match before a trailing newline, so ``sb-…\n`` named the sandbox
# ``sb-…`` (session 14: a second spelling of an id, with an envd token of its own).
_BODY = re.compile(r"[0-9a-z]{25}")
_MAX = (1 << 128) - 1

ZERO_UUID = uuid.UUID(int=0)
PLATFORM_TEAM_ID = ZERO_UUID
MINIMAL_TEMPLATE_ID = ZERO_UUID


class Kind(StrEnum):
    SANDBOX = "sb-"
    USER = "usr-"
    TEAM = "team-"
    API_KEY = "key-"
    HOST = "host-"
    HOST_TOKEN = "htok-"  # noqa: S105 - an ID prefix, not a secret
    REFRESH_TOKEN = "hrt-"  # noqa: S105 - an ID prefix, not a secret
    AUDIT_LOG = "log-"
    BUILD = "bld-"  # a template build (docs/templates.md §4)
    WATCHER = "wch-"  # a polling directory watcher, scoped to its sandbox (docs/networking.md §4)
    INVITATION = "inv-"  # a pending invitation to join a team (docs/auth.md "Invitations")


# Two digits at a time: 13 ``divmod`` of a 1296-entry table instead of 25 of the alphabet (a
# create formats ~7 ids, ~360 builtin calls with one digit at a time; session 14).
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


@functools.lru_cache(maxsize=4096)
def base36(u: uuid.UUID) -> str:
    """The UUID as a 128-bit big-endian integer in base36, left-padded to 25 chars. Cached: a
    request formats the same few ids (its sandbox's, team's, host's) several times, and the
    string is a function of the UUID alone."""
    n = u.int
    out = []
    for _ in range(13):  # 26 digits; 36**25 > 2**128, so the first is always 0
        n, r = divmod(n, 1296)
        out.append(_PAIRS[r])
    out.reverse()
    return "".join(out)[1:]


def format_id(kind: Kind, u: uuid.UUID) -> str:
    return kind.value + base36(u)


def parse_id(kind: Kind, text: str, *, what: str | None = None) -> uuid.UUID:
    """Parse ``text`` as an ID of ``kind``; a bad one is a 400 naming ``what``."""
    label = what or f"{kind.name.lower().replace('_', ' ')} ID"
    if not isinstance(text, str) or not text.startswith(kind.value):
        raise InvalidRequest(f"invalid {label}")
    body = text[len(kind.value) :]
    if not _BODY.fullmatch(body):
        raise InvalidRequest(f"invalid {label}")
    n = int(body, 36)
    if n > _MAX:
        raise InvalidRequest(f"invalid {label}")
    return uuid.UUID(int=n)


def new_uuid() -> uuid.UUID:
    return uuid.uuid4()


def new_id(kind: Kind) -> tuple[uuid.UUID, str]:
    u = new_uuid()
    return u, format_id(kind, u)


# Convenience wrappers used all over the code base.
def sandbox_id(u: uuid.UUID) -> str:
    return format_id(Kind.SANDBOX, u)


def user_id(u: uuid.UUID) -> str:
    return format_id(Kind.USER, u)


def team_id(u: uuid.UUID) -> str:
    return format_id(Kind.TEAM, u)


def host_id(u: uuid.UUID) -> str:
    return format_id(Kind.HOST, u)


def api_key_id(u: uuid.UUID) -> str:
    return format_id(Kind.API_KEY, u)
