"""How far a client follows a server's pages (docs/security.md §32).

A listing the SDK or the CLI reads to its end (``files.list``, ``warren invitations list``, the
replay of a build's log) follows the cursor each page names. A broken or hostile server could
name one for ever: the client would page, and hold what it read, without end. So each loop
follows at most a bound the platform chose for that listing, and never a cursor it was given
before; either is a bad response (``WarrenError``, code ``bad_response``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from warren.sdk._exceptions import WarrenError

__all__ = ["PageCursors"]

C = TypeVar("C", bound=Hashable)


class PageCursors(Generic[C]):
    """The cursors one listing has followed: at most ``most`` pages in all, each cursor once.

    ``first`` is the cursor the first page was asked with (``""``: none); it counts as followed.

    Example::

        cursors = PageCursors("the invitations", 100, first="")
        cursor = cursors.follow(next_cursor)   # WarrenError("bad_response") past the bound
    """

    def __init__(self, what: str, most: int, first: C) -> None:
        self.what = what
        self.most = most
        self._seen: set[C] = {first}

    def follow(self, cursor: C) -> C:
        """``cursor``, the next page's, once it is known to keep the listing within its bound."""
        if cursor in self._seen:
            raise WarrenError(
                f"the server named a page of {self.what} it had already sent", code="bad_response"
            )
        if len(self._seen) >= self.most:
            raise WarrenError(
                f"the server kept paging {self.what} past {self.most} pages", code="bad_response"
            )
        self._seen.add(cursor)
        return cursor
