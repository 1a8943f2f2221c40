"""The build spool's leftovers (services/build_spool.py, session 26): the staging and request
files, uploads and import work directories a CP killed outright left are removed once no live
work can still be using them; live ones (this replica's or another's sharing the spool) and
anything else are kept. And the upload's bound that the sweep relies on (api/templates.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from warren.config import Settings
from warren.cp.api import templates as api
from warren.cp.services import build_spool, template_builds
from warren.cp.services.template_builds import BuildRunner
from warren.errors import PayloadTooLarge

TIMEOUT_S = 1800
IMPORT_S = 3600  # WARREN_IMPORT_TIMEOUT_S's default
DAY = 24 * 3600


def _settings(home: Path) -> Settings:
    return Settings(home=home, jwt_secret="x" * 32, build_timeout_s=TIMEOUT_S, build_stale_s=3600)


def _age(path: Path, age_s: float) -> Path:
    then = time.time() - age_s
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _file(spool: Path, name: str, age_s: float) -> Path:
    (spool / name).write_bytes(b"x")
    return _age(spool / name, age_s)


def _dir(spool: Path, name: str, age_s: float, layer_age_s: float) -> Path:
    """An import's work directory with a layer in it (and the directory's time set after it)."""
    (spool / name).mkdir()
    _file(spool / name, "sha256.tar", layer_age_s)
    return _age(spool / name, age_s)


def _spool(home: Path, outside: Path) -> dict[str, Path]:
    """A killed CP's leftovers (past each bound) beside live work's files (within it) and
    look-alikes that are not the CP's."""
    spool = home / "build-spool"
    spool.mkdir(parents=True)
    settings = _settings(home)
    past = TIMEOUT_S + build_spool.MARGIN_S + 60
    upload_bound = build_spool.upload_s(settings) + IMPORT_S + build_spool.MARGIN_S
    import_bound = IMPORT_S + build_spool.MARGIN_S
    outside.mkdir()
    _file(outside, "keep", 10 * DAY)
    _age(outside, 10 * DAY)
    os.symlink(outside, spool / ".import-link")  # a link of that name: its target untouched
    _age(spool / ".import-link", 10 * DAY)
    os.symlink("/etc/hostname", spool / ".staging-link.tar")
    _age(spool / ".staging-link.tar", past)
    return {
        "old-staging": _file(spool, ".staging-abc.tar", past),
        "old-copy": _file(spool, ".copy-abc.json", past * 10),
        "running-staging": _file(spool, ".staging-def.tar", 60),
        "running-copy": _file(spool, ".copy-def.json", 60),
        "longest-build": _file(spool, ".staging-ghi.tar", TIMEOUT_S),
        "old-upload": _file(spool, ".upload-abc.tar", upload_bound + 60),
        "slowest-upload": _file(spool, ".upload-def.tar", upload_bound - 60),  # still being read
        "old-import": _dir(spool, ".import-abc", import_bound + 60, import_bound + 60),
        "running-import": _dir(spool, ".import-def", 60, 60),
        "writing-import": _dir(spool, ".import-ghi", 10 * DAY, 5),  # a long layer: being written
        "import-file": _file(spool, ".import-file", 10 * DAY),  # a file, not an import's directory
        "upload-dir": _dir(spool, ".upload-dir", 10 * DAY, 10 * DAY),  # a directory, not an upload
        "staging-dir": _dir(spool, ".staging-dir", 10 * DAY, 10 * DAY),
        "other": _file(spool, "other", 10 * DAY),
    }


KEPT = {
    "running-staging", "running-copy", "longest-build", "slowest-upload", "running-import",
    "writing-import", "import-file", "upload-dir", "staging-dir", "other",
}  # fmt: skip


def _kept(files: dict[str, Path]) -> set[str]:
    return {name for name, path in files.items() if path.exists()}


def test_old_leftovers_are_removed_and_the_rest_kept(tmp_path: Path) -> None:
    files = _spool(tmp_path / "home", tmp_path / "outside")
    settings = _settings(tmp_path / "home")
    assert build_spool.sweep_spool(settings) == 4
    assert _kept(files) == KEPT
    spool = build_spool.spool_dir(settings)
    assert (spool / ".staging-link.tar").is_symlink() and (spool / ".import-link").is_symlink()
    assert (tmp_path / "outside" / "keep").exists()  # the link's target, untouched
    assert build_spool.sweep_spool(settings) == 0  # again: nothing


def test_the_ages_from_the_limits() -> None:
    """The defaults' numbers: an 8 GiB upload at 16 KiB/s is 6.1 days, then its import's hour."""
    settings = Settings(home=Path("/nonexistent"), jwt_secret="x" * 32)
    assert build_spool.upload_s(settings) == 30 + (8192 + 4) * 1024 / 16
    ages = {rule.prefixes[0]: rule.max_age_s for rule in build_spool.rules(settings)}
    assert ages == {".staging-": 1800 + 600, ".upload-": 524_574 + 3600 + 600, ".import-": 3600 + 600}


def test_no_spool_yet() -> None:
    assert build_spool.sweep(Path("/nonexistent/build-spool"), [], 1.0) == 0


async def test_the_build_runners_sweep_clears_the_spool_at_its_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CP's build sweeper (every replica's, at once when it starts) sweeps the spool."""

    async def no_builds(engine: Any, stale_s: float) -> int:
        return 0

    monkeypatch.setattr(template_builds, "sweep_stale", no_builds)
    files = _spool(tmp_path / "home", tmp_path / "outside")
    runner = BuildRunner(None, None, None, None, _settings(tmp_path / "home"))  # type: ignore[arg-type]
    runner.start_sweeper()
    try:
        for _ in range(500):
            if not files["old-import"].exists():
                break
            await asyncio.sleep(0.01)
        assert _kept(files) == KEPT
    finally:
        await runner.stop()


class _Request:
    """What ``_form`` reads of a request: its content type and its body's chunks."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.headers = {"content-type": "multipart/form-data; boundary=XX"}
        self._chunks = chunks

    def stream(self) -> AsyncIterator[bytes]:
        return self._chunks


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    extra = f'; filename="{filename}"' if filename else ""
    return f'--XX\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value + b"\r\n"


async def _no_check(fields: dict[str, str]) -> None:
    return None


async def test_the_form_is_read_to_its_last_boundary_only(tmp_path: Path) -> None:
    """Bytes after the last boundary are not read: the upload ends there (it could go on at the
    minimum pace for ever before, its file kept)."""
    read_after = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read_after
        yield _part("name", b"t") + _part("image", b"layers", "i.tar") + b"--XX--\r\n"
        while read_after < 100:
            read_after += 1
            yield b"x" * 1024

    fields, saved = await api._form(_Request(body()), "image", tmp_path, 1 << 20, _no_check)  # type: ignore[arg-type]
    assert saved is not None and saved[0].read_bytes() == b"layers" and fields == {"name": "t"}
    assert read_after <= 1


async def test_the_form_around_the_file_is_bounded(tmp_path: Path) -> None:
    """A field repeated under one name is one field, so the form's count did not bound them;
    the body did not either (the file's cap is its part's): 413 past the envelope."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(20):  # 5 MiB of fields
            yield _part("name", b"n" * (256 * 1024))
        yield _part("image", b"layers", "i.tar") + b"--XX--\r\n"

    with pytest.raises(PayloadTooLarge):
        await api._form(_Request(body()), "image", tmp_path, 1 << 20, _no_check)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
