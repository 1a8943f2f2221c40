"""A stop event for work that checks one (warren/stoppable.py): it reads as set from a chosen
look on, so a test stops the work mid-way without threads or timing."""

from __future__ import annotations

import threading


class StopAfter(threading.Event):
    """A stop event that reads as set from its ``checks``-th look on (the caller's
    cancellation arriving mid-way), counting the looks."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left, self.looks = checks, 0

    def is_set(self) -> bool:
        self.looks += 1
        self.left -= 1
        return self.left < 0 or super().is_set()
