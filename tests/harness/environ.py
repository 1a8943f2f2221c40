"""The test process's environment changed for a while: the CP and agent processes a test starts
read their settings from it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping


@contextlib.contextmanager
def environ(values: Mapping[str, str], *, unset: Iterable[str] = ()) -> Iterator[None]:
    """``os.environ`` with ``values`` set and ``unset`` removed; every variable named is back as
    it was (set or not) afterwards."""
    names = [*values, *unset]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(values)
    for k in unset:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
