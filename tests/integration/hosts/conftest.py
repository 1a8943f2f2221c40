"""Fixtures: one in-process control plane per module on a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren import clock

from .cpserver import CP


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CP]:
    server = await CP(db_url, Path(tmp_path_factory.mktemp("cp-home"))).start()
    try:
        yield server
    finally:
        await server.stop()
        clock.reset()
