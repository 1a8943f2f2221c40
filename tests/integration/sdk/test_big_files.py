"""A 200 MiB file round trip by stream through a control plane in its own process, whose RSS
must grow by less than 50 MiB; and a download that breaks midway must fail loudly."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.platform import Platform
from warren import Sandbox
from warren.sdk import StreamError

pytestmark = [pytest.mark.root, pytest.mark.timeout(900), pytest.mark.shared_platform]

MIB = 1 << 20
SIZE = 200 * MIB


def _blob_chunks() -> Iterator[bytes]:
    """200 MiB of non-repeating bytes (each MiB differs), generated on the fly."""
    seed = hashlib.sha256(b"warren").digest() * (MIB // 32)
    for i in range(SIZE // MIB):
        head = i.to_bytes(8, "big")
        yield head + seed[8:]


class RssWatch:
    """Samples a process's RSS every few ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.base = platform.cp.rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.platform.cp.rss())
            time.sleep(0.005)

    def __enter__(self) -> RssWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / MIB


def test_200_mib_round_trip_with_flat_cp_memory(platform: Platform) -> None:
    expected = hashlib.sha256()
    for c in _blob_chunks():
        expected.update(c)
    with Sandbox.create(**platform.sdk()) as sbx:
        # Warm the routes up first, so the measurement is about the transfer, not imports.
        sbx.files.write_stream("/root/warm", b"x" * MIB)
        b"".join(sbx.files.read_stream("/root/warm"))
        with RssWatch(platform) as rss:
            t0 = time.monotonic()
            sbx.files.write_stream("/root/big.bin", _blob_chunks())
            up_s = time.monotonic() - t0
            got = hashlib.sha256()
            n = 0
            t0 = time.monotonic()
            for chunk in sbx.files.read_stream("/root/big.bin"):
                got.update(chunk)
                n += len(chunk)
            down_s = time.monotonic() - t0
        speed = f"upload {SIZE / MIB / up_s:.0f} MiB/s, download {SIZE / MIB / down_s:.0f} MiB/s"
        print(f"\n{speed}; CP RSS {rss.base / MIB:.0f} → {rss.peak / MIB:.0f} MiB (+{rss.growth_mib:.1f})")
        assert n == SIZE and got.hexdigest() == expected.hexdigest()
        assert (
            sbx.commands.run("sha256sum /root/big.bin", timeout=120).stdout.split()[0] == expected.hexdigest()
        )
        assert rss.growth_mib < 50, f"CP RSS grew by {rss.growth_mib:.1f} MiB"

        # The unary routes refuse it: 413 before any byte of the body is sent.
        r = httpx.post(f"{platform.url}/v1/sandboxes/{sbx.id}/files/read", json={"path": "/root/big.bin"},
                       headers=platform.headers, timeout=60)  # fmt: skip
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_download_broken_midway_is_an_error(platform: Platform) -> None:
    sbx = Sandbox.create(**platform.sdk())
    try:
        sbx.commands.run("head -c 300M /dev/zero > /root/z.bin", timeout=120)
        stream = sbx.files.read_stream("/root/z.bin")
        received = len(next(stream))
        sbx.kill()  # the sandbox (and its guest agent) goes away mid-transfer
        with pytest.raises(StreamError):
            for chunk in stream:
                received += len(chunk)
        assert received < 300 * MIB
    finally:
        sbx.kill()
        sbx.close()
