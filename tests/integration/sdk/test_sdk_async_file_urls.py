"""The asyncio SDK's signed file URLs (``files.download_url`` / ``files.upload_url``): the same op
as the blocking face's (tests/integration/cp/api/test_file_urls.py), awaited, with its keywords."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.harness.platform import Platform
from warren import AsyncSandbox

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), pytest.mark.shared_platform]


async def test_async_signed_urls(platform: Platform) -> None:
    async with await AsyncSandbox.create(memory_mb=128, **platform.sdk()) as sbx:
        await sbx.files.write("/root/a.txt", "signed")
        d = await sbx.files.download_url("/root/a.txt", expires=600, user="root")
        assert d.method == "GET" and time.time() < d.expires_at <= time.time() + 660
        u = await sbx.files.upload_url("/root/b.txt", expires=120)
        assert u.method == "PUT" and d.url != u.url
        async with httpx.AsyncClient(timeout=60) as http:  # no API key anywhere
            r = await http.get(d.url)
            assert r.status_code == 200 and r.content == b"signed", (d.url, r.text)
            assert (await http.put(u.url, content=b"uploaded")).status_code == 204
        assert await sbx.files.read("/root/b.txt") == "uploaded"
