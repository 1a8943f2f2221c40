"""The one rule for text Warren keeps: no NUL (PostgreSQL text refuses it) and valid Unicode (a
lone surrogate such as ``"\\udfff"``, which JSON can spell, is no UTF-8). Request bodies
(``cp/services/strict.py``) and imported image configs (``layers/oci_image.py``) both ask it."""

from __future__ import annotations


def text_problem(value: str, *, nul_ok: bool = False) -> str | None:
    """Why ``value`` cannot be kept as text, or None."""
    if not nul_ok and "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone surrogates)"
    return None
