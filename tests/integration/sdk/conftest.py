"""Fixtures: one live platform (CP process + one real agent) per test module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from warren import Sandbox

from .platform import Platform, start_platform

pytestmark = pytest.mark.root


# Not pytest's tmp_path: its base is 0700, while sandbox root (an unprivileged host uid) must
# traverse down to its rootfs under the agent's data dir.
BASE = Path(tempfile.gettempdir()) / "warren-sdk-tests"


@pytest.fixture(scope="module")
def platform_dir() -> Iterator[Path]:
    BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="run-", dir=BASE))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    p = await start_platform(db_url, platform_dir)
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(**platform.sdk()) as s:
        yield s
