"""The build spool's leftovers (services/build_spool.py, session 26): the staging and request
files a CP killed outright left are removed once no build can still be using them; a running
build's (this replica's or another's sharing the spool) and anything else are kept."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from warren.config import Settings
from warren.cp.services import build_spool, template_builds
from warren.cp.services.template_builds import BuildRunner

TIMEOUT_S = 1800


def _settings(home: Path) -> Settings:
    return Settings(home=home, jwt_secret="x" * 32, build_timeout_s=TIMEOUT_S, build_stale_s=3600)


def _file(spool: Path, name: str, age_s: float) -> Path:
    path = spool / name
    path.write_bytes(b"x")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _spool(home: Path) -> dict[str, Path]:
    """A killed CP's leftovers (a build's time limit and the margin ago, and more) beside a
    running build's files (written a minute ago, and one as old as a build can be)."""
    spool = home / "build-spool"
    spool.mkdir(parents=True)
    past = TIMEOUT_S + build_spool.MARGIN_S + 60
    files = {
        "old-staging": _file(spool, ".staging-abc.tar", past),
        "old-copy": _file(spool, ".copy-abc.json", past * 10),
        "running-staging": _file(spool, ".staging-def.tar", 60),
        "running-copy": _file(spool, ".copy-def.json", 60),
        "longest-build": _file(spool, ".staging-ghi.tar", TIMEOUT_S),
        "old-upload": _file(spool, ".upload-abc.tar", past),  # not a build's staging: kept
    }
    (spool / ".staging-dir").mkdir()  # a directory of that name: not one of the CP's files
    os.symlink("/etc/hostname", spool / ".staging-link.tar")
    then = time.time() - past
    os.utime(spool / ".staging-link.tar", (then, then), follow_symlinks=False)
    return files


def _kept(files: dict[str, Path]) -> set[str]:
    return {name for name, path in files.items() if path.exists()}


def test_old_staging_and_request_files_are_removed_and_the_rest_kept(tmp_path: Path) -> None:
    files = _spool(tmp_path)
    settings = _settings(tmp_path)
    assert build_spool.sweep(build_spool.spool_dir(settings), build_spool.max_age_s(settings)) == 2
    assert _kept(files) == {"running-staging", "running-copy", "longest-build", "old-upload"}
    spool = tmp_path / "build-spool"
    assert (spool / ".staging-dir").is_dir() and (spool / ".staging-link.tar").is_symlink()
    assert build_spool.sweep(spool, build_spool.max_age_s(settings)) == 0  # again: nothing


def test_no_spool_yet() -> None:
    assert build_spool.sweep(Path("/nonexistent/build-spool"), 1.0) == 0


async def test_the_build_runners_sweep_clears_the_spool_at_its_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CP's build sweeper (every replica's, at once when it starts) sweeps the spool."""

    async def no_builds(engine: Any, stale_s: float) -> int:
        return 0

    monkeypatch.setattr(template_builds, "sweep_stale", no_builds)
    files = _spool(tmp_path)
    runner = BuildRunner(None, None, None, None, _settings(tmp_path))  # type: ignore[arg-type]
    runner.start_sweeper()
    try:
        for _ in range(500):
            if not files["old-staging"].exists():
                break
            await asyncio.sleep(0.01)
        assert _kept(files) == {"running-staging", "running-copy", "longest-build", "old-upload"}
    finally:
        await runner.stop()
