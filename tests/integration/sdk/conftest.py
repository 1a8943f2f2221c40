"""Fixtures: one live platform (``platform`` from tests/harness/fixtures.py: a CP process and
one real agent) per test module, and a fresh sandbox on it per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.platform import Platform
from warren import Sandbox


@pytest.fixture
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(**platform.sdk()) as s:
        yield s
