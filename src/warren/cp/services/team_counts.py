"""How many of something each team holds at once in this CP process (one replica).

Used where holding one costs the process (a spooled upload, an image being read) and a database
connection held for it would cost more: a count kept in memory, checked and taken with no await
in between (one event loop), given back however the holder ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from warren.errors import WarrenError


class TeamCounts:
    """One kind of thing held per team, e.g. build contexts uploading."""

    def __init__(self) -> None:
        self._held: dict[uuid.UUID, int] = {}

    @contextmanager
    def holding(self, team_id: uuid.UUID, limit: int, refuse: Callable[[int], WarrenError]) -> Iterator[None]:
        """Hold one of ``team_id``'s ``limit`` for the block; ``refuse(held)`` is raised when they
        are all taken."""
        held = self._held.get(team_id, 0)
        if held >= limit:
            raise refuse(held)
        self._held[team_id] = held + 1
        try:
            yield
        finally:
            left = self._held.pop(team_id) - 1
            if left:
                self._held[team_id] = left
