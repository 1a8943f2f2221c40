"""One helper object per :class:`SandboxManager`, made on first use.

The agent's dialer (dial.py) and its file watchers (watch_rpc.py) each hang off the manager
without the manager knowing them; a weak map lets a test's manager take its helper with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from warren.agent.manager import SandboxManager

__all__ = ["PerManager"]

T = TypeVar("T")


class PerManager(Generic[T]):
    """``per(manager)``: the manager's one ``make(manager)``, made on the first call."""

    def __init__(self, make: Callable[[SandboxManager], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[SandboxManager, T] = weakref.WeakKeyDictionary()

    def __call__(self, manager: SandboxManager) -> T:
        found = self._made.get(manager)
        if found is None:
            found = self._made[manager] = self._make(manager)
        return found
