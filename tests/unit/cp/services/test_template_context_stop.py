"""A build context's index and COPY's staging layer stop when the build is cancelled (session
24, services/template_context.py): the stop event is checked at each member, file and chunk
written, and the work ends with ``Stopped`` long before its end."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from tests.harness.stop_after import StopAfter
from warren.cp.services.template_context import BuildContext, staging_layer
from warren.cp.services.template_spec import CopyStep, parse
from warren.cp.services.tenant_threads import TenantThreads
from warren.stoppable import Stopped

MiB = 1 << 20
MAX = 1 << 30


def _context(tmp_path: Path, files: int, size: int, links: int = 0) -> Path:
    """``files`` files of ``size`` bytes under d/, and ``links`` hard links to the first."""
    path = tmp_path / "context.tar"
    with tarfile.open(path, "w") as t:
        for i in range(files):
            info = tarfile.TarInfo(f"d/f{i}")
            info.size = size
            t.addfile(info, io.BytesIO(bytes(size)))
        for i in range(links):
            info = tarfile.TarInfo(f"d/l{i}")
            info.type, info.linkname = tarfile.LNKTYPE, "d/f0"
            t.addfile(info)
    return path


def _copy() -> CopyStep:
    step = parse("FROM minimal\nCOPY d /x").steps[1]
    assert isinstance(step, CopyStep)
    return step


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_index_stops_at_a_member_and_closes_the_tar(tmp_path: Path) -> None:
    path = _context(tmp_path, 50, 1)
    before = _fds()
    stop = StopAfter(10)
    with pytest.raises(Stopped):
        BuildContext(path, stop)
    assert stop.looks == 11  # one look a member: the 11th member found it set
    assert _fds() == before  # the context's tar was closed
    ctx = BuildContext(path, threading.Event())  # an unset event: indexed whole
    try:
        assert len(ctx.members) == 50
    finally:
        ctx.close()


def test_staging_stops_between_files(tmp_path: Path) -> None:
    """Many small files: each is a look, most of them write no chunk of their own."""
    ctx = BuildContext(_context(tmp_path, 2000, 10))
    out = tmp_path / "s.tar"
    try:
        whole, _ = staging_layer(ctx, _copy(), 1, out, MAX)
        stop = StopAfter(100)
        with pytest.raises(Stopped):
            staging_layer(ctx, _copy(), 1, out, MAX, stop)
    finally:
        ctx.close()
    assert out.stat().st_size < whole.size // 4  # what was written when it stopped, a part


def test_staging_stops_inside_one_large_file(tmp_path: Path) -> None:
    """One file's hard links: the bytes of one member, checked at each chunk written."""
    ctx = BuildContext(_context(tmp_path, 1, 4 * MiB, links=3))
    out = tmp_path / "s.tar"
    try:
        stop = StopAfter(3)  # three of the staging's first directory entries and the file's look
        with pytest.raises(Stopped):
            staging_layer(ctx, _copy(), 1, out, MAX, stop)
    finally:
        ctx.close()
    assert out.stat().st_size < MiB  # stopped in the first file's first chunks


async def test_a_cancelled_staging_ends_at_its_next_chunk(tmp_path: Path) -> None:
    """Through the tenant threads, as the build calls it: the cancelled caller's wait for its
    thread ends when the staging stops, not when its 4 GiB of links would have been written."""
    ctx = BuildContext(_context(tmp_path, 1, 16 * MiB, links=255))
    out = tmp_path / "s.tar"
    threads = TenantThreads(1)
    try:
        task = asyncio.ensure_future(
            threads.run("a", lambda stop: staging_layer(ctx, _copy(), 1, out, 8 << 30, stop))
        )
        while not out.exists() or out.stat().st_size < 16 * MiB:
            assert not task.done()
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped_at = out.stat().st_size
        assert threads.turns.running == 0
    finally:
        ctx.close()
    assert stopped_at < 1 << 30, stopped_at  # of 4 GiB: it stopped soon after the cancel
    await asyncio.sleep(0.2)
    assert out.stat().st_size == stopped_at  # and nothing writes to it any more
