"""How many of something each team holds at once in this CP process (one replica).

Used where holding one costs the process (a spooled upload, an image being read) and a database
connection held for it would cost more: a count kept in memory, checked and taken with no await
in between (one event loop), given back however the holder ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from warren.errors import TooManyRequests


class TeamCounts:
    """One kind of thing held per team, e.g. ``what="build contexts uploading"``; ``code``: the
    429's machine code when a team holds all it may."""

    def __init__(self, what: str, code: str) -> None:
        self.what, self.code = what, code
        self._held: dict[uuid.UUID, int] = {}

    @contextmanager
    def holding(self, team_id: uuid.UUID, limit: int) -> Iterator[None]:
        """Hold one of ``team_id``'s ``limit`` for the block; TooManyRequests (no Retry-After:
        one ends when its holder is done) when they are all taken."""
        held = self._held.get(team_id, 0)
        if held >= limit:
            raise TooManyRequests(
                f"the team has {held} {self.what} (at most {limit}); wait for one to end", code=self.code
            )
        self._held[team_id] = held + 1
        try:
            yield
        finally:
            left = self._held.pop(team_id) - 1
            if left:
                self._held[team_id] = left
