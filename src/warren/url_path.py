"""How a client puts a caller's value into a REST path: the SDK and the CLI both use it.

An ID or a name placed in a URL path as it is can leave its route: ``/`` adds segments, and
``..`` (which httpx resolves before sending) climbs out, so ``Sandbox.connect("sb-…/ports/8000/x")``
reached a stranger's public port through the control plane's preview route, with the caller's
command and its environment (session 37). Percent-quoting alone is not enough there: the server
decodes ``%2F`` before it routes. So a sandbox ID must have the platform's shape, and any other
value is quoted whole, with the two names a URL resolves away (``.`` and ``..``) refused, and
what is no text the platform keeps (a NUL, a lone surrogate: ``warren/text.py``).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from warren.text import text_problem

__all__ = ["PathSegmentError", "sandbox_id", "segment"]

# ids.py's shape (a prefix and the UUID in 25 base36 digits), kept here so that the SDK imports
# no server module.
_SANDBOX_ID = re.compile(r"sb-[0-9a-z]{25}")


class PathSegmentError(ValueError):
    """A value that cannot stand for one segment of a request's path."""


def sandbox_id(value: object) -> str:
    """``value`` if it is a sandbox ID (``sb-`` and 25 lowercase letters or digits)."""
    if not isinstance(value, str) or not _SANDBOX_ID.fullmatch(value):
        raise PathSegmentError(f"not a sandbox ID: {value!r} (sb- and 25 lowercase letters or digits)")
    return value


def segment(value: object, what: str) -> str:
    """``value`` (a ``str`` or ``int``) as one path segment, every reserved character quoted."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or text in ("", ".", "..") or text_problem(text):
        raise PathSegmentError(f"not a valid {what}: {value!r}")
    return quote(text, safe="")
