"""Fixtures: one live platform (CP process + one real agent) per test module."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from warren import Sandbox

from .platform import Platform, start_platform

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
async def platform(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    p = await start_platform(db_url, Path(tmp_path_factory.mktemp("platform")))
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(**platform.sdk()) as s:
        yield s
